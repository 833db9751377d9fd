"""The real sender and the real edge in one process, over aiortc and HTTPS signaling."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from kpvid.models import model_id
from kpvid.models.predictors import make_predictor
from kpvid.protocol import (
    KeypointDecoder,
    KeypointEncoder,
    decode_source_image,
    encode_source_image,
)
from kpvid.protocol.keypoint_set import from_kp6, to_kp6
from kpvid.receiver.stream_stats import EndReason
from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from kpvid.sender.stats import SenderStats
from kpvid.training.visualize import to_uint8
from tests.edge_harness import EDGE_TEST_CHECKPOINT, TOKEN, running_edge, shipped_model, wait_for


def expected_frames(source: SyntheticSource, frames: int, observe: int, predict: int,
                    codec: str, predictor: str) -> np.ndarray:
    """What the edge must output, computed without any streaming code: the sender's JPEG source
    image, its keypoints through the codec, the predictor alone in the gaps, and one plain FOMM
    generator call per frame."""
    kp_detector, generator, _ = shipped_model()
    extractor = KeypointExtractor(kp_detector)
    encoder, decoder = KeypointEncoder(codec), KeypointDecoder(codec, extractor.num_kp)
    source_image = decode_source_image(encode_source_image(source.frame_at(0)), "jpeg")

    def tensor(image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255)

    predict_gaps = make_predictor(predictor, model_id=model_id(EDGE_TEST_CHECKPOINT))
    out = []
    with torch.inference_mode():
        kp_source = kp_detector(tensor(source_image))
        for index in range(frames):
            if index % (observe + predict) < observe:
                payload = encoder.encode(index, *extractor.detect(source.frame_at(index)))
                (decoded,) = decoder.decode(index, payload)
                kp6 = to_kp6(decoded.value, decoded.jacobian)
                predict_gaps.observe(kp6)
            else:
                kp6 = predict_gaps.predict()
            value, jacobian = from_kp6(kp6)
            kp_driving = {"value": torch.from_numpy(value)[None],
                          "jacobian": torch.from_numpy(jacobian)[None]}
            prediction = generator(tensor(source_image), kp_driving, kp_source)["prediction"]
            out.append(to_uint8(prediction)[0])
    return np.stack(out)


@pytest.mark.parametrize("observe, predict, predictor, codec", [
    (1, 1, "constant-velocity", "delta"), (2, 3, "vrnn", "q12")])
def test_frames_out_are_the_frames_expected(tmp_path, observe, predict, predictor, codec):
    frames = 30

    async def scenario() -> tuple[int, dict, dict[int, np.ndarray]]:
        # every frame rendered, however late a busy machine makes it: this test is about content
        async with running_edge(tmp_path, predictor=predictor, max_lag=5.0) as edge:
            out: dict[int, np.ndarray] = {}
            edge.edge.stream_opened.append(lambda session: session.sinks.append(
                lambda index, rgb, _capture_time: out.__setitem__(index, rgb)))
            port = int(edge.url.rsplit(":", 1)[1])
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(edge.cert), stream="e2e", codec=codec,
                                    observe=observe, predict=predict, max_frames=frames)
            source = SyntheticSource("faces", seed=11, size=64, fps=30.0, length=frames)
            extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)
            code = await run_sender(source, extractor, options, stats)
            await wait_for(lambda: any(s.name == "e2e" for s in edge.edge.ended), 10)
            return code, edge.edge.ended[-1].to_json(), out

    stats = SenderStats()
    code, final, out = asyncio.run(scenario())
    assert code == 0
    assert final["ended"] == f"{EndReason.SENDER_FINISHED.value}: end of stream"
    observed = sum(1 for i in range(frames) if i % (observe + predict) < observe)
    # the edge's final Feedback came before its bye: both ends report the same counts
    assert stats.feedback is not None
    assert (stats.feedback.received, stats.feedback.lost, stats.feedback.predicted) == (
        observed, 0, frames - observed)
    assert final["frames"] == {"observed": observed, "predicted": frames - observed, "lost": 0,
                               "late": 0, "out": frames, "dropped": 0, "thinned": 0}
    assert sorted(out) == list(range(frames))
    got = np.stack([out[i] for i in range(frames)]).astype(int)
    source = SyntheticSource("faces", seed=11, size=64, fps=30.0, length=frames)
    want = expected_frames(source, frames, observe, predict, codec, predictor).astype(int)
    assert np.abs(got - want).max() <= 1
    assert final["latency_ms"]["p50"] is not None and final["latency_ms"]["p50"] < 1000


def test_two_streams_play_at_once_and_share_model_calls(tmp_path):
    frames = 60

    async def scenario() -> tuple[list[int], dict, float]:
        # two senders and the edge share 2 cores here: a longer playout delay absorbs the jitter
        async with running_edge(tmp_path, playout_delay=0.3) as edge:
            port = int(edge.url.rsplit(":", 1)[1])
            extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)
            # A model call of 25 ms whatever its batch: one stream's frames alone would need
            # 50 ms per 33 ms tick pair, so the jobs queue and the engine must batch them.
            synthesizer = edge.edge.engine.synthesizer
            render_many = synthesizer.render_many

            def slow_render_many(sources, kp_driving):
                time.sleep(0.025)
                return render_many(sources, kp_driving)

            synthesizer.render_many = slow_render_many

            def sender(name: str, seed: int):
                options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                        ca_file=str(edge.cert), stream=name, max_frames=frames)
                source = SyntheticSource("faces", seed=seed, size=64, fps=30.0, length=frames)
                return run_sender(source, extractor, options)

            codes = await asyncio.gather(sender("one", 1), sender("two", 2))
            await wait_for(lambda: len(edge.edge.ended) == 2, 10)
            engine = edge.edge.engine
            ended = {s.name: s.to_json() for s in edge.edge.ended}
            return codes, ended, engine.frames / engine.batches

    codes, ended, frames_per_call = asyncio.run(scenario())
    assert codes == [0, 0]
    for name in ("one", "two"):
        counts = ended[name]["frames"]
        # every tick is played; on 2 busy cores some may be skipped to stay live (dropped)
        assert counts["out"] + counts["dropped"] == frames and counts["lost"] <= 3, counts
    assert frames_per_call > 1.0, frames_per_call  # some model calls rendered both streams
