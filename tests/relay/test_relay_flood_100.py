"""One relay, 100 connected members, one more floods it (issue 9, item 4: load).

Loopback only: the relay server and the 100 clients share this test's event loop on 127.0.0.1;
the flooder is a separate process sending 1,200-byte packets over UDP as fast as it can to one
of the 100 (the victim). While it floods, every client sends a packet to the next one around a
ring every 20 ms. Each client must get its neighbour's packets through, the victim included,
while the flooder's rate limit cuts it down to a small fraction of what it sent.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import struct
import time
from pathlib import Path
from typing import Final

from relay_support import Inbox, client_for, flood, make_relay_mesh, relay_config, running, wait_for

from meshctl.keys import NodePublic
from meshctl.relay.server_core import Limits

CLIENTS: Final = 100
ROUNDS: Final = 50  # packets each client sends to its neighbour during the flood
ROUND_GAP_S: Final = 0.02
FLOOD_S: Final = 6.0
FLOOD_SIZE: Final = 1200
LIMITS: Final = Limits(rate_bytes_per_s=2_000_000, burst_bytes=200_000)
MIN_DELIVERED: Final = 0.95  # of each client's packets, the victim's too
RING_PACKET_BYTES: Final = 1 + struct.calcsize("!HHd")


class TimedInbox(Inbox):
    """An inbox that also keeps how long each ring packet took (its send time is inside)."""

    def __init__(self) -> None:
        super().__init__()
        self.delays_s: list[float] = []

    def __call__(self, src: NodePublic, payload: bytes) -> None:
        super().__call__(src, payload)
        if len(payload) == RING_PACKET_BYTES:
            self.delays_s.append(time.monotonic() - struct.unpack("!HHd", payload[1:])[2])


def test_hundred_clients_get_through_while_one_floods(tmp_path: Path) -> None:
    t_start = time.monotonic()
    names = tuple(f"c{i:03d}" for i in range(CLIENTS))
    mesh = make_relay_mesh(tmp_path / "coord", (*names, "flooder"))
    build_s = time.monotonic() - t_start
    victim = mesh.devices[names[0]]
    flooder = mesh.devices["flooder"]
    ring = {names[i]: names[(i + 1) % CLIENTS] for i in range(CLIENTS)}  # sender -> receiver
    wg = {n: mesh.devices[n].wireguard.public() for n in names}

    async def scenario() -> dict[str, float]:
        async with running(relay_config(mesh, tmp_path, limits=LIMITS)) as server:
            inboxes = {n: TimedInbox() for n in names}
            clients = {n: client_for(server, mesh, mesh.devices[n], inboxes[n]) for n in names}
            t_connect = time.monotonic()
            await asyncio.gather(*(c.start() for c in clients.values()))
            connected = await asyncio.gather(*(c.wait_connected(20) for c in clients.values()))
            assert all(connected), f"{connected.count(False)} of {CLIENTS} clients did not connect"
            connect_s = time.monotonic() - t_connect
            assert server.udp_addr is not None
            ctx = multiprocessing.get_context("spawn")
            result = ctx.Queue()
            proc = ctx.Process(target=flood, args=(
                ("127.0.0.1", server.udp_addr[1]), flooder.identity.private_bytes_for_device(),
                flooder.wireguard.public().raw, mesh.network_id, victim.wireguard.public().raw, FLOOD_S,
                FLOOD_SIZE, result))
            proc.start()
            try:
                flood_pub = flooder.wireguard.public()
                assert await wait_for(lambda: inboxes[names[0]].count_from(flood_pub) > 100, 15), \
                    "the flood never reached the victim"
                t_flood_seen = time.monotonic()
                sent = dict.fromkeys(names, 0)
                for seq in range(ROUNDS):
                    for n in names:
                        payload = b"\x04" + struct.pack("!HHd", names.index(n), seq, time.monotonic())
                        sent[n] += clients[n].send(wg[ring[n]], payload)
                    await asyncio.sleep(ROUND_GAP_S)
                sending_s = time.monotonic() - t_flood_seen

                def got(n: str) -> int:
                    return inboxes[ring[n]].count_from(wg[n])

                await wait_for(lambda: all(got(n) >= sent[n] for n in names), 5)
                still_flooding = proc.is_alive()
                flooded = await asyncio.to_thread(result.get, True, 20)
            finally:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            delivered = {n: got(n) for n in names}
            delays = sorted(d for box in inboxes.values() for d in box.delays_s)
            flood_through = inboxes[names[0]].count_from(flood_pub)
            drops = server.core.stats.drops.get("rate_limited", 0)
            for c in clients.values():
                await c.stop()
            figures = {
                "build_s": build_s, "connect_s": connect_s, "sending_s": sending_s,
                "min_sent": min(sent.values()), "min_delivered": min(delivered.values()),
                "median_delivered": statistics.median(delivered.values()),
                "delay_median_ms": 1000 * statistics.median(delays),
                "delay_p99_ms": 1000 * delays[int(0.99 * (len(delays) - 1))], "delay_max_ms": 1000 * delays[-1],
                "victim_delivered": delivered[names[-1]],  # the victim's neighbour sends to it
                "flooded": flooded, "flood_through": flood_through, "rate_limited": drops,
                "still_flooding": float(still_flooding),
            }
            print(f"relay flood, {CLIENTS} clients: {figures}")
            assert still_flooding, "the flood ended before the clients' packets were through"
            assert min(sent.values()) == ROUNDS, sent  # every client could hand every packet over
            short = {n: d for n, d in delivered.items() if d < MIN_DELIVERED * ROUNDS}
            assert not short, f"clients whose packets did not get through: {short}"
            assert flooded > 10 * flood_through, (flooded, flood_through)
            assert drops > 0
            return figures

    figures = asyncio.run(scenario())
    assert time.monotonic() - t_start < 60, figures
