"""An impaired keypoint channel end to end: bursty loss, jitter (so reordering) and duplicates
between a sender coding with the `delta` codec and a real edge. The playout never stalls: every
tick of the stream's clock gives a frame, lost and undecodable sets are concealed, and the
sender's chain restarts on the edge's IntraRequest."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from kpvid.protocol import Bye, IntraRequest, KeypointEncoder, Keypoints, encode_message
from kpvid.training.loss_models import GilbertElliott
from tests.edge_harness import RawSender, detect, running_edge, synthetic_clip

FRAMES = 90  # 3 s at 30 fps
FPS = 30.0


def test_loss_jitter_and_duplicates_are_concealed_and_the_playout_never_stalls(tmp_path):
    clip = synthetic_clip(FRAMES)
    values, jacobians = detect(clip)
    lost = GilbertElliott(0.2, burst_length=3, seed=4).lost(FRAMES)
    rng = np.random.default_rng(5)
    jitter = rng.uniform(0, 0.1, FRAMES)  # up to 100 ms late: packets overtake each other
    duplicated = rng.random(FRAMES) < 0.1

    async def scenario():
        # a playout delay longer than the jitter: a late packet is still in time
        async with running_edge(tmp_path, playout_delay=0.15) as edge:
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("impaired", clip[0], observe=1, predict=0,
                                      codec="delta")
            encoder = KeypointEncoder("delta")
            requests_seen = 0
            start = time.time()
            sends: list[tuple[float, bytes]] = []  # (when, message) still to go out
            for i in range(FRAMES):
                # the sender codes frame i at its capture time, reacting to IntraRequests
                await asyncio.sleep(max(0.0, start + i / FPS - time.time()))
                requests = sum(isinstance(m, IntraRequest) for m in sender.received)
                if requests > requests_seen:
                    encoder.request_intra()
                    requests_seen = requests
                message = encode_message(Keypoints(i, 0, 0, "delta", encoder.encode(
                    i, values[i], jacobians[i])))
                if not lost[i]:
                    sends.append((start + i / FPS + jitter[i], message))
                    if duplicated[i]:
                        sends.append((start + i / FPS + jitter[i] + 0.02, message))
                due = [s for s in sends if s[0] <= time.time()]
                sends = [s for s in sends if s[0] > time.time()]
                for _, data in sorted(due, key=lambda s: s[0]):
                    sender.kp.send(data)
            for when, data in sorted(sends, key=lambda s: s[0]):
                await asyncio.sleep(max(0.0, when - time.time()))
                sender.kp.send(data)
            sender.ctrl.send(encode_message(Bye("done", last_frame_index=FRAMES - 1)))
            session = edge.edge.streams["impaired"]
            await asyncio.wait_for(session.ended.wait(), 10)
            snapshot = session.stats().to_json()
            await sender.close()
            return snapshot, requests_seen, encoder.intra_payloads

    snapshot, requests, intra_payloads = asyncio.run(scenario())
    counts = snapshot["frames"]
    assert lost.sum() >= 10  # the pattern does lose packets
    # every tick of the clock gave a frame (out) or was skipped to stay live (dropped)
    assert counts["out"] + counts["dropped"] == FRAMES, counts
    # nothing was skipped by the schedule; what did not play as sent was concealed
    assert counts["predicted"] == 0
    assert counts["observed"] + counts["lost"] == FRAMES, counts
    assert counts["lost"] >= lost.sum()  # lost, plus undecodable until the next intra
    assert counts["observed"] >= FRAMES // 2
    assert snapshot["undecodable"] > 0  # delta payloads whose reference was lost
    assert requests >= 1 and intra_payloads >= 2  # the first, and one asked for
