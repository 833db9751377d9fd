"""The edge's HTTPS endpoints (aiohttp): signaling for senders and viewers, the viewer page,
stream stats, Prometheus metrics and a health check.

Two bearer tokens (they may be the same): the *send* token lets a sender offer a stream
(`POST /offer`) and an operator read `/metrics`; the *view* token lets a browser watch
(`POST /view/offer`, `GET /api/streams`, `GET /api/config`), and so does the send token (whoever
may send may also watch). `/` and `/healthz` are public: the page itself holds no secret and asks
for the token. Tokens are compared in constant time and never logged.

Every refusal is JSON, `{"error": "..."}` (limits add `"reason"`), and counted by status in
`kpvid_http_rejected_total`. The offer endpoints are rate limited per client address (429).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib.resources import files

from aiohttp import web
from aiortc import RTCSessionDescription
from aiortc.sdp import SessionDescription
from prometheus_client import CONTENT_TYPE_LATEST

from .edge import Edge, EdgeFull, NoSuchStream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # an SDP offer is a few kB
EDGE_KEY: web.AppKey[Edge] = web.AppKey("edge", Edge)
PUBLIC_PATHS = frozenset({"/", "/healthz"})
SEND, VIEW = "send", "view"
# which tokens each endpoint takes; any other path (a 404 to be) wants either
ROLES: dict[str, frozenset[str]] = {
    "/offer": frozenset({SEND}),
    "/metrics": frozenset({SEND}),
    "/view/offer": frozenset({SEND, VIEW}),
    "/api/streams": frozenset({SEND, VIEW}),
    "/api/config": frozenset({SEND, VIEW}),
}
OFFERS_PER_SECOND = 2.0
OFFER_BURST = 5

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens of one edge (kept out of repr, so out of any log line)."""

    send: str = field(repr=False)
    view: str = field(repr=False)

    def __post_init__(self) -> None:
        if not self.send or not self.view:
            raise ValueError("a send token and a view token are required")

    def accepts(self, header: str, roles: frozenset[str]) -> bool:
        """Whether an Authorization header carries the token of one of `roles` (every
        candidate is compared, each in constant time)."""
        given = header.encode("utf-8", "replace")
        matches = [hmac.compare_digest(given, f"Bearer {getattr(self, role)}".encode())
                   for role in sorted(roles)]
        return any(matches)


class OfferRateLimiter:
    """Token buckets per (endpoint, client address): `rate` offers a second, at most `burst`
    at once. Remembers at most `max_clients` addresses, forgetting the longest idle first."""

    def __init__(self, rate: float, burst: int = OFFER_BURST, max_clients: int = 4096,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("an offer rate limit needs rate > 0 and burst >= 1")
        self.rate, self.burst, self.max_clients, self.clock = rate, burst, max_clients, clock
        self._buckets: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()

    def take(self, key: tuple[str, str]) -> float:
        """Spend one offer of `key`'s bucket: 0 when allowed, else seconds until one is."""
        now = self.clock()
        tokens, last = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1:
            tokens -= 1
        else:
            wait = (1 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait


OFFER_LIMITER_KEY: web.AppKey[OfferRateLimiter | None] = web.AppKey("offer_limiter")


def error(status: int, message: str, **extra: object) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Middleware: count every refusal by status; aiohttp's own (413, 404, 405...) become
    JSON like ours."""
    metrics = request.app[EDGE_KEY].metrics
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        metrics.rejected.labels(str(exc.status)).inc()
        if exc.content_type == "application/json":
            raise
        replacement = error(exc.status, exc.text or exc.reason)
        for name in ("Allow", "Retry-After", "WWW-Authenticate"):
            if name in exc.headers:
                replacement.headers[name] = exc.headers[name]
        return replacement
    if response.status >= 400:
        metrics.rejected.labels(str(response.status)).inc()
    return response


def bearer_auth(tokens: Tokens) -> Callable:
    """Middleware: 401 unless the request carries a token its path takes (see `ROLES`)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            roles = ROLES.get(request.path, frozenset({SEND, VIEW}))
            if not tokens.accepts(request.headers.get("Authorization", ""), roles):
                wanted = "the send token" if roles == {SEND} else "the view or send token"
                log.debug("refused %s %s from %s: no valid token", request.method,
                          request.path, remote_of(request))
                response = error(401, f"missing or wrong token (send 'Authorization: Bearer "
                                      f"TOKEN' with {wanted})")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    return middleware


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


def rate_limit(request: web.Request, endpoint: str) -> None:
    """Spend one of the client's offers, or raise a 429 that says when to retry."""
    limiter = request.app[OFFER_LIMITER_KEY]
    if limiter is None:
        return
    wait = limiter.take((endpoint, remote_of(request)))
    if wait > 0:
        request.app[EDGE_KEY].metrics.offers_refused.labels("rate_limited").inc()
        raise web.HTTPTooManyRequests(
            text=json.dumps({"error": f"too many offers from {remote_of(request)}: at most "
                                      f"{limiter.rate:g} a second (bursts of "
                                      f"{limiter.burst}); retry in {wait:.1f} s",
                             "reason": "rate_limited"}),
            content_type="application/json", headers={"Retry-After": str(math.ceil(wait))})


async def read_offer(request: web.Request, media: str) -> tuple[RTCSessionDescription, dict]:
    """The offer in a signaling request, or an HTTP 400 that says what is wrong with it.
    `media` is the m-line kind the offer must have (senders: application, viewers: video).

    The body is read as JSON whatever its Content-Type says (the bearer token, not the content
    type, is what keeps other sites' pages out); bodies over `MAX_BODY_BYTES` get a 413."""
    raw = await request.read()
    try:
        body = json.loads(raw)  # bytes: UTF-8/16/32 detected, whatever charset is claimed
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError...
        raise bad_request(f"body is not JSON: {str(exc)[:200]}") from None
    if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) \
            or body.get("type") != "offer":
        raise bad_request('expected {"sdp": "<offer SDP>", "type": "offer"}')
    if f"m={media} " not in body["sdp"]:
        raise bad_request(f"invalid SDP offer: no m={media} section")
    try:  # before any peer connection is made for it
        SessionDescription.parse(body["sdp"])
    except Exception as exc:  # the parser raises several kinds on bad text
        raise bad_request(f"invalid SDP offer: {str(exc)[:200] or type(exc).__name__}") \
            from None
    return RTCSessionDescription(sdp=body["sdp"], type="offer"), body


def remote_of(request: web.Request) -> str:
    return request.remote or "unknown"


def edge_full(exc: EdgeFull) -> web.Response:
    """503 when the edge is full; 429 when the client itself holds too many slots."""
    mine = exc.reason == "too_many_pending"
    response = error(429 if mine else 503, str(exc), reason=exc.reason)
    response.headers["Retry-After"] = "2" if mine else "5"
    return response


async def sender_offer(request: web.Request) -> web.Response:
    rate_limit(request, SEND)
    offer, _ = await read_offer(request, "application")
    edge = request.app[EDGE_KEY]
    try:
        answer = await edge.accept_sender(offer, remote_of(request))
    except EdgeFull as exc:
        return edge_full(exc)
    except Exception as exc:  # aiortc raises several kinds on a bad SDP
        log.warning("sender offer from %s refused: %r", remote_of(request), exc)
        return error(400, f"invalid SDP offer: {exc}")
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def viewer_offer(request: web.Request) -> web.Response:
    rate_limit(request, VIEW)
    offer, body = await read_offer(request, "video")
    name = body.get("stream")
    if name is not None and not isinstance(name, str):
        return error(400, '"stream" must be a string or null')
    edge = request.app[EDGE_KEY]
    try:
        answer, name = await edge.accept_viewer(offer, name or None, remote_of(request))
    except NoSuchStream as exc:
        return error(404, str(exc))
    except EdgeFull as exc:
        return edge_full(exc)
    except Exception as exc:
        log.warning("viewer offer from %s refused: %r", remote_of(request), exc)
        return error(400, f"invalid SDP offer: {exc}")
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "stream": name,
                              "edge": edge.instance})


async def viewer_page(request: web.Request) -> web.Response:
    page = files("kpvid.receiver").joinpath("static/viewer.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


async def streams(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    return web.json_response({"streams": [stats.to_json() for stats in edge.stats()],
                              "ended": [stats.to_json() for stats in edge.ended],
                              "resuming": edge.resuming(), "edge": edge.instance})


async def ice_config(request: web.Request) -> web.Response:
    options = request.app[EDGE_KEY].options
    servers = []
    viewer_servers = options.viewer_ice_servers
    for server in options.ice_servers if viewer_servers is None else viewer_servers:
        entry: dict = {"urls": server.urls if isinstance(server.urls, list) else [server.urls]}
        if server.username:
            entry.update(username=server.username, credential=server.credential)
        servers.append(entry)
    return web.json_response({"iceServers": servers})


async def metrics(request: web.Request) -> web.Response:
    body = request.app[EDGE_KEY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "streams": len(request.app[EDGE_KEY].streams)})


def make_app(edge: Edge, token: str | None = None, *, send_token: str | None = None,
             view_token: str | None = None, offers_per_second: float | None = None,
             offer_burst: int = OFFER_BURST) -> web.Application:
    """The aiohttp application serving `edge`; closing the app closes the edge.

    `token` is the default of both `send_token` and `view_token`. `offers_per_second` limits
    each client address's offers per endpoint (bursts of `offer_burst`); None: no limit."""
    tokens = Tokens(send=send_token or token or "", view=view_token or token or "")
    app = web.Application(middlewares=[json_errors, bearer_auth(tokens)],
                          client_max_size=MAX_BODY_BYTES)
    app[EDGE_KEY] = edge
    app[OFFER_LIMITER_KEY] = None if offers_per_second is None else \
        OfferRateLimiter(offers_per_second, offer_burst)
    app.router.add_get("/", viewer_page)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/streams", streams)
    app.router.add_get("/api/config", ice_config)
    app.router.add_post("/offer", sender_offer)
    app.router.add_post("/view/offer", viewer_offer)

    async def close_edge(app: web.Application) -> None:
        await app[EDGE_KEY].close()

    app.on_shutdown.append(close_edge)
    return app
