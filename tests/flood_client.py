"""A flood of offers from many client addresses at once, run as its own process so that its
CPU is not the edge's event loop's (``python -m tests.flood_client URL CA TOKEN ...``).

Each address (127.0.0.2, 127.0.0.3, ... on loopback; Linux routes all of 127/8 to ``lo``) keeps
one HTTPS connection and posts, every ``1/rate`` s, in turn: a real sender offer, a real viewer
offer, a garbage body and a request without a token. It prints one JSON line: the count of each
HTTP status (or exception name) by kind of request, and the number of requests made.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import time
from collections import Counter

import aiohttp
from aiortc import RTCConfiguration, RTCPeerConnection


async def offer_sdp(kind: str) -> str:
    """A real offer: a sender's (its two data channels) or a viewer's (recvonly video)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if kind == "sender":
        pc.createDataChannel("kp")
        pc.createDataChannel("ctrl")
    else:
        pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp = pc.localDescription.sdp
    await pc.close()
    return sdp


async def flood(url: str, ca: str, token: str, addresses: int, rate: float,
                seconds: float) -> dict:
    sender_sdp, viewer_sdp = await offer_sdp("sender"), await offer_sdp("viewer")
    context = ssl.create_default_context(cafile=ca)
    auth = {"Authorization": f"Bearer {token}"}
    requests = [  # (kind, path, headers, body)
        ("sender", "/offer", auth, json.dumps({"type": "offer", "sdp": sender_sdp})),
        ("viewer", "/view/offer", auth, json.dumps({"type": "offer", "sdp": viewer_sdp})),
        ("garbage", "/offer", auth, '{"type": "offer", "sdp": "v=0\\r\\nm=application x'),
        ("no_token", "/view/offer", {}, "{}"),
    ]
    counts: dict[str, Counter] = {kind: Counter() for kind, *_ in requests}
    end = time.monotonic() + seconds

    async def client(n: int) -> None:
        address = f"127.0.0.{2 + n}"
        connector = aiohttp.TCPConnector(ssl=context, local_addr=(address, 0), limit=1)
        timeout = aiohttp.ClientTimeout(total=20)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            i = n  # the addresses start at different points of the cycle
            start = time.monotonic()
            while time.monotonic() < end:
                kind, path, headers, body = requests[i % len(requests)]
                try:
                    async with http.post(url + path, data=body, headers={
                            **headers, "Content-Type": "application/json"}) as response:
                        await response.read()
                        counts[kind][str(response.status)] += 1
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    counts[kind][type(exc).__name__] += 1
                i += 1
                await asyncio.sleep(max(0.0, start + (i - n) / rate - time.monotonic()))

    await asyncio.gather(*(client(n) for n in range(addresses)))
    return {kind: dict(counter) for kind, counter in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("ca")
    parser.add_argument("token")
    parser.add_argument("--addresses", type=int, default=50)
    parser.add_argument("--rate", type=float, default=4.0, help="requests a second per address")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    counts = asyncio.run(flood(args.url, args.ca, args.token, args.addresses, args.rate,
                               args.seconds))
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
