"""The sender's WebRTC session: HTTPS signaling, keypoints on ``kp``, control on ``ctrl``.

One session: create the ``kp`` (unordered, no retransmits) and ``ctrl`` (reliable) channels,
gather ICE while setting the local offer (aiortc does not trickle), POST the offer to
``https://HOST:PORT/offer`` with the bearer token, apply the answer, then on ``ctrl``: Hello, the
source image (the session's first frame), and keypoints on ``kp`` for every observed frame.
The edge answers on ``ctrl``, except its IntraRequests, which come on ``kp`` as well: there a
lost one does not hold up what follows, and the edge asks again soon. Each connection's
channels, messages and state are an :class:`~kpvid.sender.edge_connection.EdgeConnection`;
this module does the signalling, the reconnects and the paced frame loop.

A lost edge (refused connection, HTTP 5xx, failed or closed peer connection) is retried with
exponential backoff. Each reconnect is a new session: the frame index restarts at 0 and the
Hello and a fresh source image (the new session's first frame) are sent again; the source itself
carries on where it was. A rejected token, a certificate that does not verify and a source that
fails are fatal. An edge that closes the connection is noticed at once; one that vanishes
without a word, when ICE consent checks fail (about 20-30 s with aiortc).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)

from kpvid.protocol import (
    CODEC_NAMES,
    DEFAULT_INTRA_INTERVAL,
    IMAGE_FORMATS,
    Hello,
    encode_source_image,
    validate_message,
)
from kpvid.protocol.messages import STREAM_NAME_RE, STREAM_NAME_RULE
from kpvid.protocol.schedule import Schedule

from .adaptation import AdaptationOptions
from .edge_connection import Captured, EdgeConnection
from .frame_pipeline import FramePipeline
from .keypoints import KeypointExtractor
from .sources import FrameSource, SourceError
from .stats import SenderStats

log = logging.getLogger(__name__)

DEFAULT_PORT = 8443
ICE_SCHEMES = ("stun", "stuns", "turn", "turns")
KP_BUFFER_LIMIT = 64 * 1024     # bytes queued on "kp" above which keypoint packets are dropped
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
HTTP_TIMEOUT_S = 15.0
CONNECT_TIMEOUT_S = 20.0        # answer applied -> both channels open

T = TypeVar("T")


class SenderError(Exception):
    """A failure retrying will not fix (the message says what to change)."""


class TokenRejected(SenderError):
    """The edge answered 401/403 to the offer."""


class _Retry(Exception):
    """A transient failure: reconnect after a backoff."""


DEFAULT_CODEC = "delta"


def parse_target(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` or ``[IPV6]:PORT`` -> (host, port); the port defaults to 8443."""
    text = text.strip()
    if not text or "://" in text or "/" in text:
        raise ValueError(f"expected HOST:PORT (e.g. edge:8443), got {text!r}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or (rest and not rest.startswith(":")):
            raise ValueError(f"bad IPv6 address in {text!r}; write it as [ADDRESS]:PORT")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        raise ValueError(f"write an IPv6 address in brackets, e.g. [{text}]:8443")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValueError(f"missing host in {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port must be 1-65535, got {port_text!r}")
    return host, int(port_text)


def parse_ice_server(url: str) -> RTCIceServer:
    """``stun:HOST[:PORT]`` or ``turn[s]:USER:PASS@HOST[:PORT][?transport=udp|tcp]``."""
    scheme, sep, rest = url.partition(":")
    if not sep or scheme not in ICE_SCHEMES or not rest:
        raise ValueError(f"ICE server must look like stun:HOST:PORT or "
                         f"turn:USER:PASS@HOST:PORT, got {url!r}")
    if scheme.startswith("stun"):
        if "@" in rest:
            raise ValueError(f"a STUN server takes no credentials: {url!r}")
        return RTCIceServer(urls=url)
    userinfo, at, address = rest.rpartition("@")
    username, colon, credential = userinfo.partition(":")
    if not at or not colon or not username or not address:
        raise ValueError(f"a TURN server needs credentials: {scheme}:USER:PASS@HOST:PORT, "
                         f"got {url!r}")
    return RTCIceServer(urls=f"{scheme}:{address}", username=username, credential=credential)


def sanitize_stream_name(text: str) -> str:
    """A valid stream name made from ``text`` (other characters become '-')."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")[:64]
    return name or "stream"


@dataclass
class SenderOptions:
    """Where and how to send. ``ca_file``: a PEM bundle that signs the edge's certificate;
    ``insecure``: do not verify it at all. ``ice_servers``: URLs as :func:`parse_ice_server`
    takes them (none: host candidates only). ``max_frames``: stop after that many frames."""

    host: str
    token: str
    port: int = DEFAULT_PORT
    insecure: bool = False
    ca_file: str | None = None
    stream: str = "camera0"
    codec: str = DEFAULT_CODEC
    intra_interval: int = DEFAULT_INTRA_INTERVAL
    observe: int = 1
    predict: int = 1
    source_format: str = "jpeg"
    source_quality: int = 90
    ice_servers: list[str] = field(default_factory=list)
    max_frames: int | None = None
    kp_buffer_limit: int = KP_BUFFER_LIMIT
    adapt: AdaptationOptions | None = None  # None: the schedule stays observe:predict

    def __post_init__(self) -> None:
        if not STREAM_NAME_RE.fullmatch(self.stream):
            raise ValueError(f"stream name must be {STREAM_NAME_RULE}, got {self.stream!r}")
        if self.codec not in CODEC_NAMES:
            raise ValueError(f"unknown keypoint codec {self.codec!r}; "
                             f"choose from {', '.join(CODEC_NAMES)}")
        if self.intra_interval < 1:
            raise ValueError(f"intra_interval must be >= 1, got {self.intra_interval}")
        if self.source_format not in IMAGE_FORMATS:
            raise ValueError(f"source image format must be one of {', '.join(IMAGE_FORMATS)}")
        if not self.token:
            raise ValueError("a bearer token is required")
        if self.insecure and self.ca_file:
            raise ValueError("--insecure and --ca exclude each other")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        Schedule(self.observe, self.predict)  # validates
        for url in self.ice_servers:
            parse_ice_server(url)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}/offer"

    def ssl_context(self) -> ssl.SSLContext | bool:
        """False (no verification) with ``insecure``, else a context trusting the system CAs or
        ``ca_file``."""
        if self.insecure:
            return False
        return ssl.create_default_context(cafile=self.ca_file)


def make_hello(source: FrameSource, extractor: KeypointExtractor, options: SenderOptions,
               start_time: float) -> Hello:
    """The session's Hello (frame 0 captured at ``start_time``), validated (InvalidField, a
    ValueError, names what the receiver would reject, e.g. a frame rate over 240 or observe +
    predict over 64)."""
    hello = Hello(stream=options.stream, fps=float(source.fps), observe=options.observe,
                  predict=options.predict, frame_size=source.size, num_kp=extractor.num_kp,
                  model_id=extractor.model_id, codec=options.codec, start_time=start_time)
    return validate_message(hello)


class _EndOfSource(Exception):
    """The frame source has no more frames."""


class SenderClient:
    """Streams ``source`` to the edge until the source ends, ``max_frames`` are sent, ``stop``
    is set, or a fatal error. :meth:`run` returns the process exit code (0 or 1)."""

    def __init__(self, source: FrameSource, extractor: KeypointExtractor,
                 options: SenderOptions, stats: SenderStats | None = None,
                 stop: asyncio.Event | None = None):
        if extractor.frame_size is not None and extractor.frame_size != source.size:
            raise ValueError(f"source frames are {source.size}x{source.size} but the model "
                             f"takes {extractor.frame_size}x{extractor.frame_size}")
        self.source = source
        self.extractor = extractor
        self.options = options
        self.hello = make_hello(source, extractor, options, time.time())  # checks early
        self.stats = stats if stats is not None else SenderStats()
        if self.stats.face_crop is None:
            self.stats.face_crop = source.face_crop  # --crop auto: its counts in the summary
        self.stop = stop if stop is not None else asyncio.Event()
        self._ice_servers = [parse_ice_server(url) for url in options.ice_servers]
        # one worker: the source and the detector are used from a single thread, in order
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kpvid-capture")

    async def run(self) -> int:
        """Sessions with reconnects; 0 when done or stopped, 1 on a fatal error."""
        connector = aiohttp.TCPConnector(ssl=self.options.ssl_context())
        timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)
        backoff, attempt = BACKOFF_START_S, 0
        try:
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
                while True:
                    connections = self.stats.connections
                    try:
                        await self._session(http)
                        return 0
                    except SenderError as exc:
                        log.error("%s", exc)
                        return 1
                    except SourceError as exc:
                        log.error("source failed: %s", exc)
                        return 1
                    except _Retry as exc:
                        if self.stats.connections > connections:  # this attempt connected
                            backoff, attempt = BACKOFF_START_S, 0
                        attempt += 1
                        self.stats.reconnects += 1
                        log.warning("%s; reconnecting in %.1f s (attempt %d)", exc, backoff,
                                    attempt)
                    if await self._stopped_within(backoff):
                        return 0
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            self._worker.shutdown(wait=True)
            self.stats.end_line()

    async def _stopped_within(self, seconds: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)
        return self.stop.is_set()

    async def _unless_stopped(self, awaitable: Awaitable[T], timeout: float | None = None
                              ) -> tuple[bool, T | None]:
        """(True, result) when ``awaitable`` finishes first, (False, None) when stop is set
        first (it is cancelled); ``asyncio.TimeoutError`` after ``timeout``."""
        task = asyncio.ensure_future(awaitable)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            done, _ = await asyncio.wait({task, stopper}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if task in done:
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        if not done:
            raise asyncio.TimeoutError
        return False, None

    async def _session(self, http: aiohttp.ClientSession) -> None:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        try:
            connection = EdgeConnection(pc.createDataChannel("kp", ordered=False,
                                                             maxRetransmits=0),
                                        pc.createDataChannel("ctrl", ordered=True),
                                        self.stats, self.options.kp_buffer_limit)
            kp, ctrl, lost = connection.kp_channel, connection.ctrl_channel, connection.lost
            opened = asyncio.Event()

            def on_open() -> None:
                if kp.readyState == ctrl.readyState == "open":
                    opened.set()

            kp.on("open", on_open)
            ctrl.on("open", on_open)
            ctrl.on("close", lost.set)
            ctrl.on("message", connection.on_ctrl_message)
            kp.on("message", connection.on_kp_message)

            @pc.on("connectionstatechange")
            def _state() -> None:
                log.debug("peer connection %s", pc.connectionState)
                if pc.connectionState in ("failed", "closed"):
                    lost.set()

            await pc.setLocalDescription(await pc.createOffer())
            log.info("offering to %s as stream %r", self.options.url, self.options.stream)
            finished, answer = await self._unless_stopped(self._signal(http, pc.localDescription))
            if not finished:
                return
            try:
                await pc.setRemoteDescription(answer)
            except ValueError as exc:
                raise SenderError(f"the edge's answer was not usable SDP: {exc}") from None
            connected = asyncio.ensure_future(_first_of(opened, lost))
            try:
                finished, _ = await self._unless_stopped(connected, CONNECT_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise _Retry(f"peer connection did not open within {CONNECT_TIMEOUT_S:.0f} s "
                             f"(state {pc.connectionState})") from None
            if not finished:
                return
            if lost.is_set():
                raise _Retry(f"peer connection {pc.connectionState}")
            self.stats.connections += 1
            log.info("connected to %s", self.options.url)
            await self._stream(connection)
        finally:
            await pc.close()

    async def _signal(self, http: aiohttp.ClientSession,
                      offer: RTCSessionDescription) -> RTCSessionDescription:
        """POST the offer; the answer, or SenderError / _Retry by what went wrong."""
        url = self.options.url
        headers = {"Authorization": f"Bearer {self.options.token}"}
        try:
            async with http.post(url, json={"sdp": offer.sdp, "type": offer.type},
                                 headers=headers) as response:
                status = response.status
                body = await response.text()
        except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
            raise SenderError(f"TLS with {url} failed: {exc}. For a self-signed edge "
                              "certificate pass --ca FILE (or --insecure)") from None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise _Retry(f"edge unreachable at {url}: {exc or type(exc).__name__}") from None
        if status in (401, 403):
            raise TokenRejected(f"edge rejected the token (HTTP {status} from {url})")
        if status >= 500 or status in (408, 409, 429):
            raise _Retry(f"edge answered HTTP {status}: {body[:200]}")
        if status != 200:
            raise SenderError(f"edge refused the offer: HTTP {status}: {body[:200]}")
        try:
            answer = json.loads(body)
            if not isinstance(answer, dict) or answer.get("type") != "answer" \
                    or not isinstance(answer.get("sdp"), str):
                raise ValueError("no answer")
        except ValueError:
            raise SenderError(f"{url} did not answer with an SDP answer: {body[:200]!r}") from None
        return RTCSessionDescription(sdp=answer["sdp"], type="answer")

    def _capture(self) -> Captured | None:
        """Read and detect one observed frame (runs on the worker thread)."""
        rgb = self.source.read()
        if rgb is None:
            return None
        capture_time = time.time()
        started = time.perf_counter()
        value, jacobian = self.extractor.detect(rgb)
        self.stats.detect_ms.append(1000 * (time.perf_counter() - started))
        return Captured(rgb, capture_time, value, jacobian)

    async def _on_worker(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    async def _next_frame(self, observed: bool) -> Captured | None:
        """The next frame: captured when observed, else skipped (None); _EndOfSource at the
        end."""
        if observed:
            captured = await self._on_worker(self._capture)
            if captured is None:
                raise _EndOfSource
            return captured
        if not await self._on_worker(self.source.skip):
            raise _EndOfSource
        return None

    async def _stream(self, connection: EdgeConnection) -> None:
        """Hello, source image, then the paced frame loop of one session."""
        first = await self._on_worker(self._capture)
        if not connection.open:
            raise _Retry("connection to the edge lost")
        if first is None:
            await connection.goodbye("end of stream")
            return
        options = self.options
        self.hello = make_hello(self.source, self.extractor, options, first.capture_time)
        # a new edge session: a fresh encoder, the hello's schedule again
        pipeline = FramePipeline(self.hello, options.intra_interval, options.adapt)
        connection.start(self.hello, pipeline)
        source_image = encode_source_image(first.rgb, options.source_format,
                                           options.source_quality)
        connection.send_source_image(source_image, options.source_format)
        period = 1.0 / self.source.fps
        start = time.monotonic()
        for index in itertools.count():
            ending = self._ending()
            if ending is not None:
                await connection.goodbye(ending, index - 1)
                return
            gone = connection.gone()
            if gone is not None:
                raise _Retry(gone)
            if connection.source_wanted:
                connection.send_source_image(source_image, options.source_format)
            observed = pipeline.is_observed(index)
            if index == 0:
                frame: Captured | None = first  # read above, for the source image
            else:
                if not self.source.paced:
                    delay = start + index * period - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                try:
                    frame = await self._next_frame(observed)
                except _EndOfSource:
                    log.info("end of the source after %d frames", self.stats.frames)
                    await connection.goodbye("end of stream", index - 1)
                    return
                except SourceError:
                    await connection.goodbye("source failed", index - 1)
                    raise
            self.stats.record_frame(observed)
            if frame is not None:
                adopted = pipeline.adapt(index, frame.value)
                if adopted is not None:
                    self.stats.schedule_changes += 1
                    log.info("schedule: observe %d predict %d from frame %d", adopted.observe,
                             adopted.predict, index)
                connection.send_keypoints(index, frame)
            self.stats.maybe_report()

    def _ending(self) -> str | None:
        """Why the stream ends before the next frame (stopped, or the frame limit), if it does."""
        if self.stop.is_set():
            return "sender stopped"
        limit = self.options.max_frames
        if limit is not None and self.stats.frames >= limit:
            return "end of stream"
        return None

async def _first_of(*events: asyncio.Event) -> None:
    """Returns as soon as any of ``events`` is set."""
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_sender(source: FrameSource, extractor: KeypointExtractor, options: SenderOptions,
                     stats: SenderStats | None = None, stop: asyncio.Event | None = None) -> int:
    """Stream until done; the exit code (0: clip sent, frame limit reached or stopped; 1: fatal
    error such as a rejected token)."""
    return await SenderClient(source, extractor, options, stats, stop).run()
