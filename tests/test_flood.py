"""A flood of offers from 50 client addresses at once, valid and not, while a real stream plays
to a viewer: the edge keeps answering, refuses what is over its limits (and counts it), the
stream keeps its frame rate, and every slot the flood took is free again afterwards.

The sender is its own process (``kpvid-send``), as in a deployment. In the test's process it
shared the edge's event loop: with the flood keeping that loop busy, it fell behind real time
(1.5-2 s on a loaded 2-core machine) and every set it sent came after its frame was due, which
the edge counted as lost, though the edge itself kept up."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import statistics
import sys
import threading
import time
from dataclasses import asdict

import aiohttp

from kpvid.receiver.edge import MAX_STREAMS, MAX_VIEWERS
from tests.edge_harness import (
    EDGE_TEST_CHECKPOINT,
    TOKEN,
    RawSender,
    running_edge,
    synthetic_clip,
    wait_for,
)
from tests.flood_client import offer_sdp
from tests.viewer_peer import ViewerPeer

ADDRESSES = 50
RATE = 8.0  # requests a second per address: twice what the offer limit lets through
FLOOD_SECONDS = 6.0
HANDSHAKE_TIMEOUT = 3.0  # (15 s by default) so that the flood's slots come back soon
# The stream's pace during the flood (no freeze, a frame rate) is checked unless other work on
# the machine kept the edge's event loop or its synthesis thread waiting for a CPU more than
# this share of the time: then the machine set the pace, not the edge. Measured on 2 cores: the
# loop waited 0.29-0.34 of the time with a training job running beside the test (rate 71-75 %
# of the quiet one), 0.55-0.71 with one or two more busy processes (15-32 %), 0.77 with two more
# and the training job (no frame at all for the 3 s: the playout was always more than max_lag
# behind).
STARVED = 0.4
FPS = 30


def metric_sum(text: str, prefix: str) -> dict[str, float]:
    """Every series of a Prometheus exposition starting with `prefix`, by its full name."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith(prefix)}


def cpu_wait(thread_id: int | None = None) -> float | None:
    """Seconds a thread of this process (default: the calling one) has spent runnable but
    waiting for a CPU (Linux's schedstat), None where that is not known."""
    try:
        with open(f"/proc/self/task/{thread_id or threading.get_native_id()}/schedstat") as stat:
            return int(stat.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def test_a_flood_from_many_addresses_leaves_the_edge_and_the_stream_healthy(tmp_path):
    sender_log = tmp_path / "sender.log"

    async def scenario() -> dict:
        async with running_edge(tmp_path, idle_timeout=3.0, offers_per_second=2.0,
                                handshake_timeout=HANDSHAKE_TIMEOUT,
                                playout_delay=0.1) as edge:  # (kpvid-receive's default)
            port = int(edge.url.rsplit(":", 1)[1])
            flood = None
            with sender_log.open("wb") as log:
                sender = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "kpvid.sender.cli", "--synthetic", "faces",
                    "--checkpoint", str(EDGE_TEST_CHECKPOINT),
                    "--seed", "3", "--fps", str(FPS), "--to", f"localhost:{port}",
                    "--ca", str(edge.cert), "--token", TOKEN, "--stream", "cam",
                    stdout=log, stderr=asyncio.subprocess.STDOUT)
            try:
                await wait_for(lambda: "cam" in edge.edge.streams
                               and edge.edge.streams["cam"].counts.out >= 10, 60)
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
                    start, counts = time.monotonic(), asdict(session.counts)
                    cpu, waited, packets = time.process_time(), cpu_wait(), session.packets
                    worker = edge.edge.engine.worker_thread_id
                    worker_waited = cpu_wait(worker)
                    health = await probe(start + seconds)
                    end = time.monotonic()
                    waited_end, worker_waited_end = cpu_wait(), cpu_wait(worker)
                    return {"edge_fps": (session.counts.out - counts["out"]) / (end - start),
                            "edge_frames": session.counts.out - counts["out"],
                            "viewer_fps": viewer.rate(start, end),
                            "viewer_gap": viewer.largest_gap(start, end),
                            "dropped": session.counts.dropped - counts["dropped"],
                            "lost": session.counts.lost - counts["lost"],
                            "packets": session.packets - packets,
                            "ticks": sum(getattr(session.counts, k) - counts[k]
                                         for k in ("observed", "predicted", "lost")),
                            "cpu": (time.process_time() - cpu) / (end - start),
                            # the share of the time the event loop waited for a CPU
                            "loop_starved": None if waited is None or waited_end is None
                            else (waited_end - waited) / (end - start),
                            # and the share the synthesis thread waited for one
                            "worker_starved": None if worker_waited is None
                            or worker_waited_end is None
                            else (worker_waited_end - worker_waited) / (end - start),
                            "seconds": end - start,
                            "healthz_p50": statistics.median(health),
                            "healthz_max": max(health)}

                quiet = await window(3.0)
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                flood = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.flood_client", edge.url, str(edge.cert),
                    TOKEN, "--addresses", str(ADDRESSES), "--rate", str(RATE),
                    "--seconds", str(FLOOD_SECONDS), stdout=asyncio.subprocess.PIPE)
                await wait_for(lambda: len(edge.edge._viewers) == MAX_VIEWERS, 20)  # it is on
                during = await window(FLOOD_SECONDS / 2)
                peak = {"senders": len(edge.edge._senders),
                        "viewers": len(edge.edge._viewers)}
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
                sender.send_signal(signal.SIGTERM)  # as Ctrl-C: it says bye and exits 0
                assert await asyncio.wait_for(sender.wait(), 20) == 0
                await viewer.close()
            finally:
                for process in (sender, flood):
                    if process is not None and process.returncode is None:
                        process.kill()
                        await process.wait()
        return {"quiet": quiet, "during": during, "peak": peak, "answered": answered,
                "flood_cpu": flood_cpu / FLOOD_SECONDS, "newcomer": newcomer_status,
                "latecomer": latecomer_status, "freed_after": freed_after,
                "metrics": {**metric_sum(text, "kpvid_offers_refused_total"),
                            **metric_sum(text, "kpvid_http_rejected_total"),
                            **metric_sum(text, "kpvid_handshakes_timed_out_total")}}

    try:
        figures = asyncio.run(scenario())
    finally:
        print(f"sender's output:\n{sender_log.read_text(errors='replace')[-3000:]}"
              if sender_log.exists() else "no sender output")
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
    # the edge kept answering, and the stream kept playing to its viewer (90 % of the frames
    # the edge rendered, give or take one at either end of the window)
    assert during["healthz_max"] < 2.0, figures
    assert during["viewer_fps"] * during["seconds"] >= 0.9 * during["edge_frames"] - 2, figures
    # a keypoint packet that comes after its frame was due counts as lost: with the flood on
    # these shared cores a few may come late; most must arrive in time (at 1:1 every set
    # missing would be half the ticks)
    assert during["lost"] <= 0.2 * during["ticks"], figures
    # no freeze, and the rate may dip (the flood's own process and whatever else runs on the
    # machine take CPU from the edge too; the edge's own part: see docs/reliability.md) but not
    # below a floor; unless other work kept the edge from a CPU (above: the same session still
    # plays to the same viewer, and to a latecomer). The flood's client is a process on the
    # same two cores: when it (or anything else) kept the synthesis thread from a CPU, the
    # machine set the frame rate, not the edge (this check failed at times, at 0.36-0.39 of the
    # quiet rate, when only the event loop's wait was looked at)
    if max(during["loop_starved"] or 0.0, during["worker_starved"] or 0.0) <= STARVED:
        assert during["viewer_gap"] < 1.0, figures
        assert during["edge_fps"] >= 0.4 * quiet["edge_fps"], figures
        # the playout clock kept ticking at the stream's rate (a frame too late is skipped)
        assert during["ticks"] >= 0.8 * FPS * during["seconds"], figures


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
