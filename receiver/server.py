"""The edge's HTTPS endpoints (aiohttp): signaling for senders and viewers, the viewer page,
stream stats, Prometheus metrics and a health check.

Every endpoint but `/` and `/healthz` wants `Authorization: Bearer TOKEN`; the page itself holds
no secret and asks for the token.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from importlib.resources import files

from aiohttp import web
from aiortc import RTCSessionDescription
from prometheus_client import CONTENT_TYPE_LATEST

from .edge import Edge, NoSuchStream

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # an SDP offer is a few kB
EDGE_KEY: web.AppKey[Edge] = web.AppKey("edge", Edge)
PUBLIC_PATHS = frozenset({"/", "/healthz"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def bearer_auth(token: str) -> Callable:
    """Middleware: 401 unless the request carries the token (compared in constant time)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in PUBLIC_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                request.app[EDGE_KEY].metrics.rejected.labels("401").inc()
                response = error(401, "missing or wrong token (send 'Authorization: Bearer "
                                      "TOKEN')")
                response.headers["WWW-Authenticate"] = "Bearer"
                return response
        return await handler(request)

    return middleware


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}),
                              content_type="application/json")


async def read_offer(request: web.Request, media: str) -> tuple[RTCSessionDescription, dict]:
    """The offer in a signaling request, or an HTTP 400 that says what is wrong with it.
    `media` is the m-line kind the offer must have (senders: application, viewers: video)."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"body is not JSON: {exc}") from exc
    if not isinstance(body, dict) or not isinstance(body.get("sdp"), str) \
            or body.get("type") != "offer":
        raise bad_request('expected {"sdp": "<offer SDP>", "type": "offer"}')
    if f"m={media} " not in body["sdp"]:
        raise bad_request(f"invalid SDP offer: no m={media} section")
    return RTCSessionDescription(sdp=body["sdp"], type="offer"), body


def remote_of(request: web.Request) -> str:
    return request.remote or "unknown"


async def sender_offer(request: web.Request) -> web.Response:
    offer, _ = await read_offer(request, "application")
    edge = request.app[EDGE_KEY]
    try:
        answer = await edge.accept_sender(offer, remote_of(request))
    except Exception as exc:  # aiortc raises several kinds on a bad SDP
        log.warning("sender offer from %s refused: %r", remote_of(request), exc)
        return error(400, f"invalid SDP offer: {exc}")
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


async def viewer_offer(request: web.Request) -> web.Response:
    offer, body = await read_offer(request, "video")
    name = body.get("stream")
    if name is not None and not isinstance(name, str):
        return error(400, '"stream" must be a string or null')
    edge = request.app[EDGE_KEY]
    try:
        answer, name = await edge.accept_viewer(offer, name or None, remote_of(request))
    except NoSuchStream as exc:
        return error(404, str(exc))
    except Exception as exc:
        log.warning("viewer offer from %s refused: %r", remote_of(request), exc)
        return error(400, f"invalid SDP offer: {exc}")
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "stream": name})


async def viewer_page(request: web.Request) -> web.Response:
    page = files("kpvid.receiver").joinpath("static/viewer.html").read_text(encoding="utf-8")
    return web.Response(text=page, content_type="text/html")


async def streams(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    return web.json_response({"streams": edge.snapshot(), "ended": list(edge.ended)})


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


def make_app(edge: Edge, token: str) -> web.Application:
    """The aiohttp application serving `edge`; closing the app closes the edge."""
    if not token:
        raise ValueError("a token is required")
    app = web.Application(middlewares=[bearer_auth(token)], client_max_size=MAX_BODY_BYTES)
    app[EDGE_KEY] = edge
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
