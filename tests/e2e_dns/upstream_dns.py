"""A tiny upstream DNS server for the MagicDNS end-to-end tests (standalone script, dnslib).

    python upstream_dns.py ADDRESS PORT

Answers `www.upstream.test A` with UPSTREAM_ANSWER, every other name with NXDOMAIN, over
UDP and TCP; prints "ready" once both sockets are bound. Runs until killed.
"""

from __future__ import annotations

import sys
import time
from typing import Final

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer

UPSTREAM_NAME: Final = "www.upstream.test."
UPSTREAM_ANSWER: Final = "192.0.2.80"  # TEST-NET-1: proof that the reply came from here
TTL_S: Final = 30
QUIET: Final = "-recv,-send,-request,-reply,-truncated,-error,-data"  # nothing on stdout after "ready"


class Resolver(BaseResolver):  # type: ignore[misc]
    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        q = request.q
        if str(q.qname).lower() == UPSTREAM_NAME and q.qtype == QTYPE.A:
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(UPSTREAM_ANSWER), ttl=TTL_S))
        elif str(q.qname).lower() != UPSTREAM_NAME:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


def main(address: str, port: int) -> None:
    resolver = Resolver()
    for tcp in (False, True):
        DNSServer(resolver, address=address, port=port, tcp=tcp, logger=DNSLogger(QUIET)).start_thread()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
