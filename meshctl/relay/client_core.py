"""A member's side of one relay login: handshake, keepalive, packets, channels (sans-IO).

One `ClientSession` per transport connection (the asyncio shell is client.py); the wire
format is wire.py. No sockets, no clock (`now` is passed in), randomness injected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Final, TypeAlias

from meshctl.keys import KEY_LEN, NodePublic, SigningKey, VerifyKey
from meshctl.relay.wire import (
    HEADER,
    HEADER_LEN,
    MAGIC,
    MAX_PAYLOAD_LEN,
    PING_DATA_LEN,
    PING_INTERVAL_S,
    RECV_MIN_LEN,
    RECV_PREFIX,
    TOKEN_LEN,
    VERSION,
    Challenge,
    ChallengeResponse,
    ChannelInfo,
    ChannelRequest,
    ClientHello,
    Close,
    Denied,
    DenyReason,
    FrameType,
    LocalProtocolError,
    Ping,
    Pong,
    RecvPacket,
    RelayParseError,
    Welcome,
    auth_message,
    marshal_frame,
    parse_frame,
    welcome_message,
)

HELLO_RETRY_S: Final = 1.0  # a lost UDP hello is resent this often during the handshake
HANDSHAKE_TIMEOUT_S: Final = 5.0  # then the shell reconnects (with backoff, maybe over TCP)
SILENCE_TIMEOUT_S: Final = 3 * PING_INTERVAL_S + 1.0  # three unanswered pings: the relay is gone
MAX_PENDING_PINGS: Final = 16


class ClientState(Enum):
    IDLE = "idle"
    HELLO_SENT = "hello_sent"
    RESPONSE_SENT = "response_sent"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Connected:
    ping_interval_s: float
    relay_verified: bool  # the Welcome carried a valid signature by the expected relay key


@dataclass(frozen=True, slots=True)
class Refused:
    reason: DenyReason


@dataclass(frozen=True, slots=True)
class PacketReceived:
    src: NodePublic
    payload: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    rtt_s: float


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    reason: str


@dataclass(frozen=True, slots=True)
class ChannelChanged:
    info: ChannelInfo


@dataclass(frozen=True, slots=True)
class NotTheListedRelay:
    """The relay answered, but not as the relay the state lists: it introduced itself under
    another name, or its welcome was not signed by the listed identity key. Nothing was
    signed for it; the login goes on waiting (a spoofed answer must not end it) and times out."""

    reason: str  # e.g. "it introduces itself as 'relay'"


ClientEvent: TypeAlias = (Connected | Refused | PacketReceived | PongReceived | ConnectionLost | ChannelChanged
                          | NotTheListedRelay)


class ClientSession:
    """One login to one relay, client side (sans-IO). One session per transport connection:
    after ConnectionLost or Refused, the shell makes a new session (with backoff)."""

    def __init__(self, identity: SigningKey, wg_key: NodePublic, network_id: str,
                 randbytes: Callable[[int], bytes], relay_name: str | None = None,
                 relay_key: VerifyKey | None = None) -> None:
        self._identity = identity
        self._identity_pub = identity.public()
        self.wg_key = wg_key
        self.network_id = network_id
        self._rand = randbytes
        self.expected_relay_name = relay_name
        self.relay_key = relay_key
        self.state = ClientState.IDLE
        self._out: list[bytes] = []
        self._events: deque[ClientEvent] = deque()
        self._token = b""
        self._send_prefix = b""
        self._started = 0.0
        self._retry_at: float | None = None
        self._last_rx = 0.0
        self._ping_interval = PING_INTERVAL_S
        self._next_ping: float | None = None
        self._pings: dict[bytes, float] = {}
        self.relay_name: str | None = None
        self._nonce = b""
        self._not_listed_reason: str | None = None

    # -- commands ------------------------------------------------------------------------

    def connect(self, now: float) -> None:
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError(f"connect() in state {self.state.value}")
        self.state = ClientState.HELLO_SENT
        self._started = now
        self._send_hello(now)

    def send_packet(self, dst: NodePublic, payload: bytes) -> bytes | None:
        """The frame carrying `payload` to `dst` (None when not connected or too large)."""
        if self.state is not ClientState.CONNECTED or len(payload) > MAX_PAYLOAD_LEN:
            return None
        return HEADER.pack(MAGIC, VERSION, FrameType.SEND_PACKET, TOKEN_LEN + KEY_LEN + len(payload)) + \
            self._token + dst.raw + payload

    def ping(self, now: float) -> None:
        if self.state is not ClientState.CONNECTED:
            raise LocalProtocolError("ping() before the session is connected")
        data = self._rand(PING_DATA_LEN)
        if len(self._pings) >= MAX_PENDING_PINGS:
            self._pings.pop(next(iter(self._pings)))
        self._pings[data] = now
        self._out.append(marshal_frame(Ping(self._token, data)))

    def request_channel(self, peer: NodePublic) -> bool:
        """Ask for a channel to `peer` (answered by a ChannelChanged event); False when not connected."""
        if self.state is not ClientState.CONNECTED:
            return False
        self._out.append(marshal_frame(ChannelRequest(self._token, peer)))
        return True

    def close(self) -> None:
        """Leave: queue a Close frame (when logged in) so the relay forgets the session at once."""
        if self.state is ClientState.CONNECTED:
            self._out.append(marshal_frame(Close(self._token)))
        self.state = ClientState.CLOSED

    # -- input ---------------------------------------------------------------------------

    def receive_frame(self, data: bytes, now: float) -> None:
        """One whole frame from the relay. Garbage is dropped (it never raises)."""
        if self.state in (ClientState.IDLE, ClientState.CLOSED):
            return
        try:
            frame = parse_frame(data)
        except RelayParseError:
            return
        match frame:
            case RecvPacket(src, payload) if self.state is ClientState.CONNECTED:
                self._last_rx = now
                self._events.append(PacketReceived(src, payload))
            case Challenge(nonce, name) if self.state is ClientState.HELLO_SENT:
                if self.expected_relay_name is not None and name != self.expected_relay_name:
                    # a challenge from another relay: signing it would let that relay log in as us
                    self._not_listed(f"it introduces itself as {name[:63]!r}")
                    return
                self.relay_name = name
                self._nonce = nonce
                msg = auth_message(self.network_id, name, nonce, self._identity_pub, self.wg_key)
                self._out.append(marshal_frame(ChallengeResponse(self._identity_pub, self.wg_key, nonce,
                                                                 self._identity.sign(msg))))
                self.state = ClientState.RESPONSE_SENT
                self._retry_at = now + HELLO_RETRY_S
            case Welcome(token, interval_ms, rsig) if self.state is ClientState.RESPONSE_SENT:
                verified = False
                if self.relay_key is not None:
                    msg = welcome_message(self.network_id, self.relay_name or "", self._nonce,
                                          self._identity_pub, self.wg_key, token)
                    if not rsig or not self.relay_key.verify(rsig, msg):
                        # not the relay listed in the repository: keep waiting, then time out
                        self._not_listed(f"its welcome is not signed by the listed identity key "
                                         f"{self.relay_key.short()}")
                        return
                    verified = True
                self._token = token
                self._ping_interval = max(interval_ms / 1000, 0.05)
                self.state = ClientState.CONNECTED
                self._last_rx = now
                self._retry_at = None
                self._next_ping = now + self._ping_interval
                self._events.append(Connected(self._ping_interval, verified))
            case Denied(reason):
                if reason is DenyReason.STALE_CHALLENGE and self.state is ClientState.RESPONSE_SENT:
                    self.state = ClientState.HELLO_SENT
                    self._send_hello(now)
                    return
                self.state = ClientState.CLOSED
                if reason is DenyReason.NO_SESSION:
                    self._events.append(ConnectionLost("the relay does not know this session"))
                else:
                    self._events.append(Refused(reason))
            case Pong(data) if self.state is ClientState.CONNECTED:
                self._last_rx = now
                sent = self._pings.pop(data, None)
                if sent is not None:
                    self._events.append(PongReceived(now - sent))
            case ChannelInfo() if self.state is ClientState.CONNECTED:
                self._last_rx = now
                self._events.append(ChannelChanged(frame))
            case _:
                return

    def take_packet(self, data: bytes, now: float) -> tuple[bytes, bytes] | None:
        """Fast path for the common frame: a well-formed RecvPacket while connected gives
        (source key bytes, payload) with no event; anything else gives None (use receive_frame)."""
        if (data[:6] == RECV_PREFIX and self.state is ClientState.CONNECTED and len(data) >= RECV_MIN_LEN
                and (data[6] << 8 | data[7]) == len(data) - HEADER_LEN):
            self._last_rx = now
            return data[HEADER_LEN:RECV_MIN_LEN], data[RECV_MIN_LEN:]
        return None

    def handle_timer(self, now: float) -> None:
        if self.state in (ClientState.HELLO_SENT, ClientState.RESPONSE_SENT):
            if now - self._started >= HANDSHAKE_TIMEOUT_S:
                self.state = ClientState.CLOSED
                self._events.append(ConnectionLost("handshake timed out"))
            elif self._retry_at is not None and now >= self._retry_at:
                self.state = ClientState.HELLO_SENT
                self._send_hello(now)
        elif self.state is ClientState.CONNECTED:
            if now - self._last_rx >= SILENCE_TIMEOUT_S:
                self.state = ClientState.CLOSED
                self._events.append(ConnectionLost("the relay stopped answering"))
            elif self._next_ping is not None and now >= self._next_ping:
                self.ping(now)
                self._next_ping = now + self._ping_interval

    # -- output --------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def next_event(self) -> ClientEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> Iterable[ClientEvent]:
        while self._events:
            yield self._events.popleft()

    def next_deadline(self) -> float | None:
        if self.state in (ClientState.HELLO_SENT, ClientState.RESPONSE_SENT):
            limit = self._started + HANDSHAKE_TIMEOUT_S
            return min(limit, self._retry_at) if self._retry_at is not None else limit
        if self.state is ClientState.CONNECTED:
            silence = self._last_rx + SILENCE_TIMEOUT_S
            return min(silence, self._next_ping) if self._next_ping is not None else silence
        return None

    def _not_listed(self, reason: str) -> None:
        if reason != self._not_listed_reason:  # once per session: a relay may answer every hello
            self._not_listed_reason = reason
            self._events.append(NotTheListedRelay(reason))

    def _send_hello(self, now: float) -> None:
        self._out.append(marshal_frame(ClientHello(self._identity_pub, self.wg_key)))
        self._retry_at = now + HELLO_RETRY_S
