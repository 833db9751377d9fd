"""A flood of offers from 50 client addresses at once, valid and not, while a real stream plays
to a viewer: the edge keeps answering, refuses what is over its limits (and counts it), the
stream keeps its frame rate, and every slot the flood took is free again afterwards."""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import sys
import time

import aiohttp

from kpvid.models import SHIPPED_CHECKPOINT
from kpvid.receiver.edge import MAX_STREAMS, MAX_VIEWERS
from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from tests.edge_harness import TOKEN, RawSender, running_edge, synthetic_clip, wait_for
from tests.flood_client import offer_sdp
from tests.viewer_peer import ViewerPeer

ADDRESSES = 50
RATE = 8.0  # requests a second per address: twice what the offer limit lets through
FLOOD_SECONDS = 6.0
HANDSHAKE_TIMEOUT = 3.0  # (15 s by default) so that the flood's slots come back soon


def metric_sum(text: str, prefix: str) -> dict[str, float]:
    """Every series of a Prometheus exposition starting with `prefix`, by its full name."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def test_a_flood_from_many_addresses_leaves_the_edge_and_the_stream_healthy(tmp_path):
    async def scenario() -> dict:
        async with running_edge(tmp_path, idle_timeout=3.0, offers_per_second=2.0,
                                handshake_timeout=HANDSHAKE_TIMEOUT,
                                playout_delay=0.1) as edge:  # (kpvid-receive's default)
            port = int(edge.url.rsplit(":", 1)[1])
            options = SenderOptions(host="localhost", port=port, token=TOKEN,
                                    ca_file=str(edge.cert), stream="cam")
            stop = asyncio.Event()
            sender = asyncio.create_task(run_sender(
                SyntheticSource("faces", seed=3, size=64, fps=30.0, length=120),
                KeypointExtractor.from_checkpoint(SHIPPED_CHECKPOINT), options, stop=stop))
            await wait_for(lambda: "cam" in edge.edge.streams
                           and edge.edge.streams["cam"].counts["out"] >= 10, 30)
            session = edge.edge.streams["cam"]
            viewer = ViewerPeer(edge)
            assert await viewer.connect("cam") == 200
            await wait_for(lambda: len(viewer.arrivals) >= 15, 20)

            async def probe(until: float) -> list[float]:
                """/healthz answer times (a new connection each, as a monitor makes)."""
                times = []
                while time.monotonic() < until:
                    started = time.monotonic()
                    status, body = await edge.request("GET", "/healthz", token=None)
                    assert status == 200 and body["status"] == "ok"
                    times.append(time.monotonic() - started)
                    await asyncio.sleep(0.25)
                return times

            async def window(seconds: float) -> dict:
                start, counts, cpu = time.monotonic(), dict(session.counts), time.process_time()
                health = await probe(start + seconds)
                end = time.monotonic()
                return {"edge_fps": (session.counts["out"] - counts["out"]) / (end - start),
                        "viewer_fps": viewer.rate(start, end),
                        "viewer_gap": viewer.largest_gap(start, end),
                        "dropped": session.counts["dropped"] - counts["dropped"],
                        "lost": session.counts["lost"] - counts["lost"],
                        "ticks": sum(session.counts[k] - counts[k]
                                     for k in ("observed", "predicted", "lost")),
                        "cpu": (time.process_time() - cpu) / (end - start),
                        "healthz_p50": statistics.median(health), "healthz_max": max(health)}

            quiet = await window(3.0)
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.flood_client", edge.url, str(edge.cert), TOKEN,
                "--addresses", str(ADDRESSES), "--rate", str(RATE),
                "--seconds", str(FLOOD_SECONDS), stdout=asyncio.subprocess.PIPE)
            await wait_for(lambda: len(edge.edge._viewers) == MAX_VIEWERS, 20)  # it is on
            during = await window(FLOOD_SECONDS / 2)
            peak = {"senders": len(edge.edge._senders), "viewers": len(edge.edge._viewers)}
            # someone new comes to watch now: a clear refusal (or, if it comes as a flood
            # peer times out, a slot), not a hang
            newcomer = ViewerPeer(edge)
            newcomer_status = await newcomer.connect("cam")
            await newcomer.close()
            out, _ = await asyncio.wait_for(flood.communicate(), 60)
            assert flood.returncode == 0
            flood_cpu = sum(getattr(resource.getrusage(resource.RUSAGE_CHILDREN), f)
                            - getattr(children, f) for f in ("ru_utime", "ru_stime"))
            answered = json.loads(out)
            # the flood's peers never connect: each is closed after the handshake timeout
            ended = time.monotonic()
            await wait_for(lambda: len(edge.edge._senders) == 1
                           and len(edge.edge._viewers) == 1, HANDSHAKE_TIMEOUT + 10)
            freed_after = time.monotonic() - ended
            latecomer = ViewerPeer(edge)  # and then someone new gets in
            latecomer_status = await latecomer.connect("cam")
            await wait_for(lambda: len(latecomer.arrivals) >= 5, 20)
            await latecomer.close()
            _, text = await edge.request("GET", "/metrics")
            assert not viewer.ended.is_set() and edge.edge.streams.get("cam") is session
            stop.set()
            assert await asyncio.wait_for(sender, 10) == 0
            await viewer.close()
        return {"quiet": quiet, "during": during, "peak": peak, "answered": answered,
                "flood_cpu": flood_cpu / FLOOD_SECONDS, "newcomer": newcomer_status,
                "latecomer": latecomer_status, "freed_after": freed_after,
                "metrics": {**metric_sum(text, "kpvid_offers_refused_total"),
                            **metric_sum(text, "kpvid_http_rejected_total"),
                            **metric_sum(text, "kpvid_handshakes_timed_out_total")}}

    figures = asyncio.run(scenario())
    print(json.dumps(figures, indent=1))
    quiet, during, answered, metrics = (figures["quiet"], figures["during"],
                                        figures["answered"], figures["metrics"])
    # every request got an HTTP answer, and every refusal is counted by the edge
    assert figures["newcomer"] in (200, 503) and figures["latecomer"] == 200
    newcomer_in = figures["newcomer"] == 200
    by_status: dict[str, int] = {"503": 0 if newcomer_in else 1}
    for counts in answered.values():
        for status, n in counts.items():
            assert status.isdigit(), answered  # no timeouts, no resets
            by_status[status] = by_status.get(status, 0) + n
    assert by_status["401"] == answered["no_token"]["401"] > 0
    for status in ("400", "429", "503"):
        assert by_status[status] > 0, answered
        assert metrics[f'kpvid_http_rejected_total{{status="{status}"}}'] == by_status[status]
    for reason in ("rate_limited", "max_streams", "max_viewers"):
        assert metrics[f'kpvid_offers_refused_total{{reason="{reason}"}}'] > 0, metrics
    # the limits held, and the flood's half-open peers were all closed
    # (full when the flood was on; a moment later some of its peers may have timed out)
    assert figures["peak"]["senders"] <= MAX_STREAMS
    assert figures["peak"]["viewers"] <= MAX_VIEWERS
    timed_out = sum(v for k, v in metrics.items() if k.startswith("kpvid_handshakes_timed"))
    assert timed_out == answered["sender"]["200"] + answered["viewer"]["200"] + newcomer_in
    assert figures["freed_after"] < HANDSHAKE_TIMEOUT + 5
    # the edge kept answering, and the stream kept playing to its viewer
    assert during["healthz_max"] < 2.0, figures
    assert during["viewer_fps"] >= 0.9 * during["edge_fps"], figures
    # a keypoint packet that comes after its frame was due counts as lost: with the flood on
    # these shared cores a few come late (8 of 101 ticks in one CI run); most must arrive
    # (at 1:1 every set missing would be half the ticks)
    assert during["lost"] <= 0.2 * during["ticks"], figures
    # no freeze; the rate may dip, as the flood's own process and whatever else runs on the
    # machine take CPU from the edge too (the edge's own part: see docs/reliability.md)
    assert during["viewer_gap"] < 1.0, figures
    assert during["edge_fps"] >= 0.4 * quiet["edge_fps"], figures


async def post_offer(edge, address: str, path: str, sdp: str) -> tuple[int, dict]:
    """Post a real offer from local `address` (127.0.0.x) and never use the answer."""
    connector = aiohttp.TCPConnector(ssl=edge.client_ssl(), local_addr=(address, 0))
    async with aiohttp.ClientSession(connector=connector) as http, http.post(
            edge.url + path, json={"type": "offer", "sdp": sdp},
            headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        return response.status, await response.json()


def test_one_address_cannot_hold_every_slot(tmp_path):
    """An address with `max_pending_per_address` (4) offers answered and never connected gets
    429 for more, per role, until they connect or time out; other addresses still get in.
    (Before, two addresses posting at the allowed rate could hold every slot for good.)"""
    clip = synthetic_clip(2)

    async def scenario() -> None:
        async with running_edge(tmp_path, handshake_timeout=2.0, idle_timeout=30.0) as edge:
            sender = RawSender(edge)  # a stream to offer to watch (it said hello: not pending)
            await sender.connect()
            await sender.start_stream("cam", clip[0])
            await wait_for(lambda: "cam" in edge.edge.streams, 10)
            sdps = {"/offer": await offer_sdp("sender"), "/view/offer": await offer_sdp("viewer")}
            for path, sdp in sdps.items():
                answers = [await post_offer(edge, "127.0.0.2", path, sdp) for _ in range(6)]
                assert [status for status, _ in answers] == [200] * 4 + [429] * 2, answers
                assert answers[4][1]["reason"] == "too_many_pending"
                assert "127.0.0.2 already has 4" in answers[4][1]["error"]
                assert (await post_offer(edge, "127.0.0.3", path, sdp))[0] == 200
            assert len(edge.edge._senders) == 1 + 5 and len(edge.edge._viewers) == 5
            # they never connect: closed after the handshake timeout, and the address may
            # offer again
            await wait_for(lambda: len(edge.edge._senders) == 1 and not edge.edge._viewers, 10)
            for path, sdp in sdps.items():
                assert (await post_offer(edge, "127.0.0.2", path, sdp))[0] == 200
            _, text = await edge.request("GET", "/metrics")
            refused = metric_sum(text, "kpvid_offers_refused_total")
            assert refused == {'kpvid_offers_refused_total{reason="too_many_pending"}': 4.0}
            await sender.close()

    asyncio.run(scenario())
