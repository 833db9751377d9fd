"""The edge's HTTP side under hostile input: separate send and view tokens, the stream, viewer
and offer-rate limits, and malformed, oversize or random request bodies (never a 500)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpvid.receiver.server import OFFER_LIMITER_KEY, OfferRateLimiter, Tokens
from tests.edge_harness import (
    TOKEN,
    EdgeHandle,
    RawSender,
    running_edge,
    synthetic_clip,
    wait_for,
)
from tests.flood_client import offer_sdp

SEND_SECRET = "send-Zq9x-secret"
VIEW_SECRET = "view-Kp4w-secret"
OFFER_PATHS = ("/offer", "/view/offer")


def run(coro):
    return asyncio.run(coro)


def metric(text: str, series: str) -> float:
    """The value of one series in a Prometheus exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def peers(edge: EdgeHandle) -> int:
    return len(edge.edge._senders) + len(edge.edge._viewers)


# ---------------------------------------------------------------------------------- tokens
def test_the_view_token_cannot_send_and_the_send_token_can(tmp_path):
    async def scenario():
        async with running_edge(tmp_path, send_token=SEND_SECRET,
                                view_token=VIEW_SECRET) as edge:
            sdp = await offer_sdp("sender")
            offer = {"sdp": sdp, "type": "offer"}
            status, body = await edge.request("POST", "/offer", token=VIEW_SECRET, json=offer)
            assert status == 401 and "send token" in body["error"]
            assert peers(edge) == 0
            for token in (VIEW_SECRET, TOKEN, None):
                assert (await edge.request("GET", "/metrics", token=token))[0] == 401
            for path in ("/api/streams", "/api/config"):  # both tokens may watch
                for token in (VIEW_SECRET, SEND_SECRET):
                    assert (await edge.request("GET", path, token=token))[0] == 200
                assert (await edge.request("GET", path, token=TOKEN))[0] == 401
            viewer = {"sdp": await offer_sdp("viewer"), "type": "offer"}
            for token in (VIEW_SECRET, SEND_SECRET):  # past auth: no stream to watch yet
                status, body = await edge.request("POST", "/view/offer", token=token,
                                                  json=viewer)
                assert status == 404 and "no live stream" in body["error"]
            status, body = await edge.request("POST", "/view/offer", token=TOKEN, json=viewer)
            assert status == 401 and "view or send token" in body["error"]
            sender = RawSender(edge)  # connects with edge.send_token
            await sender.connect()
            assert len(edge.edge._senders) == 1
            status, text = await edge.request("GET", "/metrics", token=SEND_SECRET)
            assert status == 200 and metric(text, 'kpvid_http_rejected_total{status="401"}') == 7
            await sender.close()

    run(scenario())


def test_tokens_are_never_logged_nor_echoed(tmp_path, caplog):
    wrong = "wrong-Hh7r-guess"

    async def scenario():
        async with running_edge(tmp_path, send_token=SEND_SECRET,
                                view_token=VIEW_SECRET) as edge:
            bodies = []
            for method, path, token in [("POST", "/offer", wrong), ("POST", "/offer",
                                                                     VIEW_SECRET),
                                        ("GET", "/metrics", VIEW_SECRET),
                                        ("GET", "/api/streams", wrong),
                                        ("POST", "/view/offer", f"{SEND_SECRET}x")]:
                status, body = await edge.request(method, path, token=token, json={})
                assert status == 401
                bodies.append(json.dumps(body))
            return "\n".join(bodies)

    with caplog.at_level(logging.DEBUG):
        bodies = run(scenario())
    assert "no valid token" in caplog.text  # the refusals were logged, without the tokens
    for secret in (SEND_SECRET, VIEW_SECRET, wrong):
        assert secret not in caplog.text and secret not in bodies
    tokens = Tokens(send=SEND_SECRET, view=VIEW_SECRET)
    assert SEND_SECRET not in repr(tokens) and VIEW_SECRET not in repr(tokens)
    with pytest.raises(ValueError, match="token"):
        Tokens(send="", view=VIEW_SECRET)


# ---------------------------------------------------------------------------------- limits
def test_a_stream_beyond_max_streams_is_refused_with_the_reason(tmp_path):
    async def scenario():
        async with running_edge(tmp_path, max_streams=1, handshake_timeout=1.5) as edge:
            made = []
            make = edge.edge._peer_connection
            edge.edge._peer_connection = lambda: made.append(1) or make()
            first = RawSender(edge)
            await first.connect()  # and never says hello
            offer = {"sdp": await offer_sdp("sender"), "type": "offer"}
            status, body = await edge.request("POST", "/offer", json=offer)
            assert status == 503 and body["reason"] == "max_streams", body
            assert "max-streams 1" in body["error"]
            assert len(made) == 1 and len(edge.edge._senders) == 1  # no peer for the refused
            # a sender that never says hello does not hold its slot for ever
            await wait_for(lambda: not edge.edge._senders, 5)
            second = RawSender(edge)
            await second.connect()
            _, text = await edge.request("GET", "/metrics")
            assert metric(text, 'kpvid_offers_refused_total{reason="max_streams"}') == 1
            assert metric(text, 'kpvid_handshakes_timed_out_total{role="sender"}') == 1
            assert metric(text, 'kpvid_http_rejected_total{status="503"}') == 1
            await first.close()
            await second.close()

    run(scenario())


def test_a_viewer_beyond_max_viewers_is_refused_with_the_reason(tmp_path):
    clip = synthetic_clip(2)

    async def scenario():
        async with running_edge(tmp_path, max_viewers=1, handshake_timeout=1.5,
                                idle_timeout=10.0) as edge:
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("full", clip[0])
            await wait_for(lambda: "full" in edge.edge.streams, 5)
            offer = {"sdp": await offer_sdp("viewer"), "type": "offer"}
            status, body = await edge.request("POST", "/view/offer", json=offer)
            assert status == 200 and body["stream"] == "full"  # and never connects
            status, body = await edge.request("POST", "/view/offer", json=offer)
            assert status == 503 and body["reason"] == "max_viewers", body
            assert len(edge.edge._viewers) == 1
            await wait_for(lambda: not edge.edge._viewers, 5)  # the silent viewer is dropped
            assert edge.edge.streams["full"].viewers == 0
            status, _ = await edge.request("POST", "/view/offer", json=offer)
            assert status == 200
            _, text = await edge.request("GET", "/metrics")
            assert metric(text, 'kpvid_offers_refused_total{reason="max_viewers"}') == 1
            await sender.close()

    run(scenario())


def test_offers_beyond_the_rate_limit_get_429(tmp_path):
    async def scenario():
        async with running_edge(tmp_path, offers_per_second=2) as edge:
            assert edge.app is not None
            now = [0.0]  # the limiter's clock: still while the test runs, however slow
            edge.app[OFFER_LIMITER_KEY].clock = lambda: now[0]  # type: ignore[union-attr]
            for _ in range(5):  # the burst
                assert (await edge.request("POST", "/offer", json=[]))[0] == 400
            status, body = await edge.request("POST", "/offer", json=[])
            assert status == 429 and body["reason"] == "rate_limited", body
            assert "at most 2 a second" in body["error"]
            # the viewer endpoint has its own bucket; unauthenticated requests spend none
            assert (await edge.request("POST", "/view/offer", json=[]))[0] == 400
            assert (await edge.request("POST", "/offer", token=None, json=[]))[0] == 401
            now[0] = 0.6  # a new offer every half second
            assert (await edge.request("POST", "/offer", json=[]))[0] == 400
            assert (await edge.request("POST", "/offer", json=[]))[0] == 429
            _, text = await edge.request("GET", "/metrics")
            assert metric(text, 'kpvid_offers_refused_total{reason="rate_limited"}') == 2
            assert metric(text, 'kpvid_http_rejected_total{status="429"}') == 2

    run(scenario())


def test_rate_limiter_buckets():
    now = [0.0]
    limiter = OfferRateLimiter(2.0, burst=3, max_clients=2, clock=lambda: now[0])
    assert [limiter.take(("send", "a")) for _ in range(3)] == [0, 0, 0]
    assert limiter.take(("send", "a")) == pytest.approx(0.5)
    assert limiter.take(("send", "b")) == 0  # another client, its own bucket
    now[0] = 0.5
    assert limiter.take(("send", "a")) == 0 and limiter.take(("send", "a")) > 0
    now[0] = 100.0  # refills to the burst, no further
    assert [limiter.take(("send", "a")) for _ in range(4)][-1] > 0
    limiter.take(("view", "c"))  # a third client: the longest idle one is forgotten
    assert len(limiter._buckets) == 2 and ("send", "b") not in limiter._buckets
    with pytest.raises(ValueError):
        OfferRateLimiter(0)


# ---------------------------------------------------------------------------------- bodies
HOSTILE_BODIES = [  # (body bytes, content type, status, words in the error)
    (b"", "application/json", 400, "not JSON"),
    (b"{not json", "application/json", 400, "not JSON"),
    (b"\xff\xfe\x00{", "application/json", 400, "not JSON"),
    (b"[" * 30_000, "application/json", 400, "not JSON"),  # deeper than the parser goes
    (b"9" * 20_000, "application/json", 400, "not JSON"),  # an int too long to convert
    (b"[1, 2]", "application/json", 400, "expected"),
    (b"null", "application/json", 400, "expected"),
    (b'{"type": "offer"}', "application/json", 400, "expected"),
    (b'{"type": "offer", "sdp": 5}', "application/json", 400, "expected"),
    (b'{"type": "offer", "sdp": ["v=0"]}', "application/json", 400, "expected"),
    (b'{"type": "answer", "sdp": "v=0"}', "application/json", 400, "expected"),
    (json.dumps({"type": "offer", "sdp": "x" * 60_000}).encode(), "application/json", 400,
     "SDP"),
    (b'{"type": "offer", "sdp": "v=0\\r\\nnot SDP \\u0000\\r\\n"}', "application/json", 400,
     "SDP"),
    (b"{" + b" " * 70_000 + b"}", "application/json", 413, "size"),
    # the content type is not what is checked: the body is
    (b"sdp=v%3D0&type=offer", "application/x-www-form-urlencoded", 400, "not JSON"),
    (b'{"type": "offer", "sdp": "v=0"}', "text/plain", 400, "SDP"),
    (b'{"type": "offer", "sdp": "v=0"}', "application/json; charset=no-such-charset", 400,
     "SDP"),
    (b"--x\r\nContent-Disposition: form-data; name=sdp\r\n\r\nv=0\r\n--x--\r\n",
     "multipart/form-data; boundary=x", 400, "not JSON"),
]


@pytest.mark.parametrize("path", OFFER_PATHS)
def test_hostile_bodies_get_a_4xx_with_a_json_reason(tmp_path, path):
    async def scenario():
        async with running_edge(tmp_path) as edge:
            for body, content_type, expected, words in HOSTILE_BODIES:
                status, answer = await edge.request("POST", path, data=body,
                                                    headers={"Content-Type": content_type})
                assert status == expected, (body[:60], content_type, answer)
                assert isinstance(answer, dict) and words in answer["error"], answer
            assert peers(edge) == 0
            assert await edge.request("GET", "/healthz", token=None) == (
                200, {"status": "ok", "streams": 0})

    run(scenario())


def test_other_http_errors_are_json_too(tmp_path):
    async def scenario():
        async with running_edge(tmp_path) as edge:
            status, body = await edge.request("GET", "/offer")
            assert status == 405 and "error" in body
            status, body = await edge.request("GET", "/no/such/page")
            assert status == 404 and "error" in body
            assert (await edge.request("GET", "/no/such/page", token=None))[0] == 401

    run(scenario())


# ---------------------------------------------------------------------------------- fuzzing
class EdgeThread:
    """An edge serving from its own thread and event loop, for hypothesis's synchronous
    examples to post to."""

    def __init__(self, tmp_path) -> None:
        self.ready = threading.Event()
        self.handle: EdgeHandle | None = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._serve(tmp_path),),
                                       daemon=True)

    async def _serve(self, tmp_path) -> None:
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        async with running_edge(tmp_path, max_streams=1000) as handle:
            self.handle = handle
            self.sdps = [await offer_sdp("sender"), await offer_sdp("viewer")]
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> EdgeThread:
        self.thread.start()
        assert self.ready.wait(60), "the edge did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)

    def request(self, method: str, path: str, **kwargs: object) -> tuple[int, object]:
        assert self.handle is not None
        future = asyncio.run_coroutine_threadsafe(
            self.handle.request(method, path, **kwargs), self.loop)
        return future.result(30)


@pytest.fixture(scope="module")
def fuzz_edge(tmp_path_factory) -> Iterator[EdgeThread]:
    with EdgeThread(tmp_path_factory.mktemp("fuzz")) as edge:
        yield edge


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
SDP_LINE = st.from_regex(r"[a-z]=[ -~]{0,40}", fullmatch=True)
RANDOM_SDP = st.builds(lambda head, lines: "\r\n".join([head, *lines]) + "\r\n",
                       st.sampled_from(["m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                                        "m=video 9 UDP/TLS/RTP/SAVPF 96", "v=0"]),
                       st.lists(SDP_LINE, max_size=8))
BODIES = st.one_of(
    st.binary(max_size=512),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"type": st.just("offer"), "sdp": RANDOM_SDP},
                          optional={"stream": JSON}).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(OFFER_PATHS), body=BODIES,
       content_type=st.sampled_from(["application/json", "text/plain", None]))
def test_random_offers_get_a_4xx_never_a_500(fuzz_edge, path, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, answer = fuzz_edge.request("POST", path, data=body, headers=headers)
    assert 400 <= status < 500, (status, answer)
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    assert fuzz_edge.request("GET", "/healthz", token=None)[0] == 200


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_real_offers_never_get_a_500(fuzz_edge, data):
    """A real offer with lines dropped, repeated or garbled: an answer or a 4xx, no 500."""
    kind = data.draw(st.sampled_from([0, 1]))
    lines = fuzz_edge.sdps[kind].split("\r\n")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "repeat", "garble", "truncate"]))
        if action == "drop":
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        elif action == "garble":
            lines[i] = data.draw(SDP_LINE)
        else:
            lines[i] = lines[i][: len(lines[i]) // 2]
        if not lines:
            lines = [""]
    status, answer = fuzz_edge.request("POST", OFFER_PATHS[kind],
                                       json={"type": "offer", "sdp": "\r\n".join(lines)})
    assert status < 500, (status, answer)
    assert fuzz_edge.request("GET", "/healthz", token=None)[0] == 200


def test_slow_clients_do_not_hold_up_others(tmp_path):
    """Slowloris: 50 connections that send half a request and stall, and one that trickles a
    body byte by byte; the edge still answers everyone else at once."""

    async def scenario() -> None:
        async with running_edge(tmp_path) as edge:
            host, port = "127.0.0.1", int(edge.url.rsplit(":", 1)[1])
            stalled = []
            for _ in range(50):
                _, writer = await asyncio.open_connection(host, port, ssl=edge.client_ssl(),
                                                          server_hostname="localhost")
                writer.write(b"POST /offer HTTP/1.1\r\nHost: localhost\r\nContent-Le")
                await writer.drain()
                stalled.append(writer)
            _, trickle = await asyncio.open_connection(host, port, ssl=edge.client_ssl(),
                                                       server_hostname="localhost")
            trickle.write(f"POST /offer HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer "
                          f"{TOKEN}\r\nContent-Length: 1000\r\n\r\n".encode())
            for _ in range(20):
                trickle.write(b"{")
                await trickle.drain()
                loop = asyncio.get_running_loop()
                started = loop.time()
                status, body = await edge.request("GET", "/healthz")
                assert status == 200 and body["status"] == "ok"
                assert loop.time() - started < 2.0
            for writer in [*stalled, trickle]:
                writer.close()

    run(scenario())
