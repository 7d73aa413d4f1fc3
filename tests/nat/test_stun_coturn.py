"""A real coturn answers our Binding request over loopback UDP."""

from __future__ import annotations

import os
import socket

import pytest
from natsupport import CoturnFactory

from meshctl.nat import stun


@pytest.mark.netns
def test_coturn_answers_our_request(coturn: CoturnFactory) -> None:
    server = coturn.start()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        for fingerprint in (True, False):
            txid = stun.new_txid(os.urandom)
            sock.sendto(stun.marshal_binding_request(txid, fingerprint=fingerprint), server.addr)
            data, src = sock.recvfrom(2048)
            assert src == server.addr
            assert stun.is_stun(data)
            got_txid, mapped = stun.parse_binding_response(data)
            assert got_txid == txid
            assert (str(mapped.ip), mapped.port) == sock.getsockname()
