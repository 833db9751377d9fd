"""A real edge (HTTPS, aiortc, the shipped model) in the test's event loop, and a raw sender
peer that can send anything, well-formed or not."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from kpvid.models import load_checkpoint_with_config, model_id
from kpvid.models.checkpoint import WEIGHTS_DIR
from kpvid.models.predictors import predictor_factory
from kpvid.protocol import (
    KEYPOINT_CODECS,
    Hello,
    Keypoints,
    decode_message,
    encode_message,
    encode_source_image,
    split_source_image,
)
from kpvid.receiver.edge import HANDSHAKE_TIMEOUT, MAX_STREAMS, MAX_VIEWERS, Edge, EdgeOptions
from kpvid.receiver.local import free_port
from kpvid.receiver.overload import OverloadOptions
from kpvid.receiver.server import make_app
from kpvid.receiver.stream import ModelInfo, SessionOptions
from kpvid.receiver.synthesis import SynthesisEngine
from kpvid.receiver.tls import ensure_certificate, server_ssl_context

TOKEN = "test-token"
# the edge and sender tests stream 64x64 clips through the shipped 64x64 model: what they test
# (transport, playout, faults) does not depend on the frame size, and 64x64 keeps them fast
EDGE_TEST_CHECKPOINT = WEIGHTS_DIR / "kpvid-heads-64.pth.tar"
_MODELS: dict[Path, tuple] = {}


def shipped_model(checkpoint: Path = EDGE_TEST_CHECKPOINT) -> tuple:
    """(kp_detector, generator, config) of a checkpoint, loaded once per test run."""
    if checkpoint not in _MODELS:
        _MODELS[checkpoint] = load_checkpoint_with_config(checkpoint)
    return _MODELS[checkpoint]


@dataclass
class EdgeHandle:
    url: str
    token: str
    cert: Path
    edge: Edge
    send_token: str = TOKEN
    view_token: str = TOKEN
    app: web.Application | None = None

    def client_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    async def request(self, method: str, path: str, *, token: str | None = TOKEN,
                      headers: dict[str, str] | None = None,
                      **kwargs: object) -> tuple[int, object]:
        headers = {**(headers or {}),
                   **({"Authorization": f"Bearer {token}"} if token is not None else {})}
        async with aiohttp.ClientSession() as http, http.request(
                method, self.url + path, headers=headers, ssl=self.client_ssl(),
                **kwargs) as response:
            text = await response.text()
            try:
                body: object = await response.json(content_type=None)
            except ValueError:
                body = text
            return response.status, body


RENDER_EVERY_FRAME = OverloadOptions(max_every=1)


@contextlib.asynccontextmanager
async def running_edge(tmp_path: Path, *, record_dir: Path | None = None,
                       predictor: str = "constant-velocity", playout_delay: float | None = 0.05,
                       idle_timeout: float = 1.0, max_lag: float = 0.25,
                       viewer_ice_servers: list[RTCIceServer] | None = None,
                       send_token: str | None = None, view_token: str | None = None,
                       max_streams: int = MAX_STREAMS, max_viewers: int = MAX_VIEWERS,
                       offers_per_second: float | None = None,
                       handshake_timeout: float = HANDSHAKE_TIMEOUT,
                       port: int | None = None, host: str = "127.0.0.1",
                       overload: OverloadOptions = RENDER_EVERY_FRAME,
                       checkpoint: Path = EDGE_TEST_CHECKPOINT,
                       ) -> AsyncIterator[EdgeHandle]:
    """An edge on `host`:`port` (default: a free port); `send_token`/`view_token` default to
    TOKEN, and offers are not rate limited unless `offers_per_second` is given. Edges made with
    the same `tmp_path` share a certificate. By default the edge renders every frame however
    busy the machine (tests of the frames' content); `overload` lets it thin them."""
    kp_detector, generator, config = shipped_model(checkpoint)
    model = ModelInfo(model_id=model_id(checkpoint),
                      frame_size=config["dataset_params"]["frame_shape"][0],
                      num_kp=config["model_params"]["common_params"]["num_kp"])
    engine = SynthesisEngine(kp_detector, generator, "cpu", new_predictor=predictor_factory(
        predictor, num_kp=model.num_kp, model_id=model.model_id), overload=overload)
    edge = Edge(engine, model, EdgeOptions(
        viewer_ice_servers=viewer_ice_servers, max_streams=max_streams,
        max_viewers=max_viewers, handshake_timeout=handshake_timeout,
        session=SessionOptions(playout_delay=playout_delay, idle_timeout=idle_timeout,
                               max_lag=max_lag, record_dir=record_dir)))
    cert, key = ensure_certificate(None, None, tmp_path / "tls", ["localhost", "127.0.0.1", host])
    app = make_app(edge, TOKEN, send_token=send_token, view_token=view_token,
                   offers_per_second=offers_per_second)
    runner = web.AppRunner(app)
    await runner.setup()
    port = port or free_port()
    site = web.TCPSite(runner, host, port, ssl_context=server_ssl_context(cert, key))
    await site.start()
    try:
        yield EdgeHandle(f"https://{'localhost' if host == '127.0.0.1' else host}:{port}",
                         TOKEN, cert, edge,
                         send_token=send_token or TOKEN, view_token=view_token or TOKEN,
                         app=app)
    finally:
        await runner.cleanup()


@dataclass
class RawSender:
    """A sender's peer connection driven by hand: the test chooses every byte it sends."""

    handle: EdgeHandle
    pc: RTCPeerConnection = field(
        default_factory=lambda: RTCPeerConnection(RTCConfiguration(iceServers=[])))
    received: list = field(default_factory=list)  # messages from the edge, both channels
    kp_received: list = field(default_factory=list)  # those of them that came on kp

    async def connect(self, timeout: float = 10.0) -> None:
        """Offer, answer, and wait (up to `timeout` s after the answer) for both channels."""
        self.kp = self.pc.createDataChannel("kp", ordered=False, maxRetransmits=0)
        self.ctrl = self.pc.createDataChannel("ctrl")
        opened = asyncio.Event()
        self.ctrl.on("open", opened.set)
        self.ctrl.on("message", lambda data: self.received.append(decode_message(data)))
        self.kp.on("message", self._on_kp_message)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, answer = await self.handle.request(
            "POST", "/offer", token=self.handle.send_token,
            json={"sdp": self.pc.localDescription.sdp, "type": "offer"})
        assert status == 200, answer
        await self.pc.setRemoteDescription(RTCSessionDescription(**answer))
        await asyncio.wait_for(opened.wait(), timeout)
        while self.kp.readyState != "open":
            await asyncio.sleep(0.01)

    def _on_kp_message(self, data: bytes) -> None:
        """The edge's IntraRequests come on kp as well."""
        message = decode_message(data)
        self.received.append(message)
        self.kp_received.append(message)

    async def start_stream(self, name: str, frame: np.ndarray, **hello_fields: object) -> Hello:
        """Hello and a source image, as a real sender starts (`hello_fields` override)."""
        _, _, config = shipped_model()
        fields = dict(stream=name, fps=30.0, observe=1, predict=1, frame_size=frame.shape[0],
                      num_kp=config["model_params"]["common_params"]["num_kp"],
                      model_id=model_id(EDGE_TEST_CHECKPOINT), codec="f16",
                      start_time=time.time())
        hello = Hello(**{**fields, **hello_fields})
        self.ctrl.send(encode_message(hello))
        for chunk in split_source_image(1, encode_source_image(frame), "jpeg"):
            self.ctrl.send(encode_message(chunk))
        return hello

    async def send_keypoints(self, values: np.ndarray, jacobians: np.ndarray,
                             indices: range, fps: float = 30.0, skip_after: int = 1) -> None:
        """Keypoint packets (f16) of frames `indices`, paced at `fps` in stream time, each
        saying `skip_after` frames follow it unsent."""
        start = time.time()
        for i in indices:
            await asyncio.sleep(max(0.0, start + (i - indices[0]) / fps - time.time()))
            self.kp.send(f16_keypoints(i, values[i], jacobians[i], skip_after))
        await asyncio.sleep(indices.step / fps)

    async def close(self) -> None:
        await self.pc.close()


def f16_keypoints(frame_index: int, value: np.ndarray, jacobian: np.ndarray,
                  skip_after: int = 1) -> bytes:
    """An encoded Keypoints message of one set in the stateless f16 codec; ``skip_after``: the
    frames skipped after it (1: RawSender's hello schedule, 1:1)."""
    return encode_message(Keypoints(frame_index, 0, skip_after, "f16",
                                    KEYPOINT_CODECS["f16"].encode(value, jacobian)))


async def wait_for(condition, timeout: float, interval: float = 0.05) -> None:
    """Poll `condition()` until it is true; fail the test after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def synthetic_clip(frames: int, seed: int = 7) -> np.ndarray:
    """A short synthetic face clip at the shipped model's size (T x H x W x 3 uint8)."""
    from kpvid.synthetic import generate_video

    _, _, config = shipped_model()
    return generate_video("faces", seed=seed, size=config["dataset_params"]["frame_shape"][0],
                          frames=frames)


def detect(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints of every frame with the shipped detector: (T,K,2) and (T,K,2,2) float32."""
    import torch

    kp_detector, _, _ = shipped_model()
    with torch.inference_mode():
        out = kp_detector(torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255))
    return out["value"].numpy(), out["jacobian"].numpy()
