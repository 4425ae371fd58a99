"""uTP (BEP 29) limits and timeouts: the per-connection and multiplexer configuration section."""

from __future__ import annotations

from dataclasses import dataclass, field

from minibt.errors import ConfigError
from minibt.ledbat import LedbatConfig
from minibt.utp_codec import MIN_PACKET_BYTES

KiB = 1024


@dataclass(frozen=True, slots=True)
class UtpConfig:
    """Per-connection and multiplexer limits (libtorrent defaults where it has one)."""

    payload_bytes: int = 1200  # minibt: conservative start, fits the 1280-byte IPv6 minimum MTU (utp_mtu)
    max_payload_bytes: int = 1400  # minibt: MTU probes search up to this (Ethernet, room for a SACK)
    send_buffer_bytes: int = 1024 * KiB  # queued + unacked payload per connection
    reorder_buffer_bytes: int = 1024 * KiB  # out-of-order payload held per connection; our wnd_size
    connect_timeout_s: float = 3.0  # libtorrent utp_connect_timeout 3000 ms
    syn_resends: int = 2  # libtorrent utp_syn_resends
    syn_recv_timeout_s: float = 6.0  # minibt: acceptor waits this long for the initiator's first ST_DATA
    num_resends: int = 3  # libtorrent utp_num_resends: consecutive timeouts before giving up
    fin_resends: int = 2  # libtorrent utp_fin_resends
    initial_timeout_s: float = 1.0  # BEP 29 'timeouts'
    min_timeout_s: float = 0.5  # BEP 29; libtorrent utp_min_timeout 500 ms
    keepalive_s: float = 29.0  # libtorrent: an ST_STATE every ~29 s idle keeps NAT mappings open
    ack_delay_s: float = 0.01  # minibt: deferred ACK fallback when socket_drained() is not called
    fin_wait_s: float = 3.0  # minibt: after our FIN is acked, wait this long for theirs
    linger_s: float = 2.0  # minibt: keep a finished connection to re-ACK a retransmitted FIN
    max_connections: int = 500  # minibt: incoming connections per multiplexer
    max_half_open: int = 50  # minibt: acceptors in SYN_RECV (spoofed SYNs cost only this)
    rst_per_s: float = 10.0  # minibt, after libutp RST_INFO_LIMIT: RESETs to unknown connections
    ledbat: LedbatConfig = field(default_factory=LedbatConfig)

    def __post_init__(self) -> None:
        if not MIN_PACKET_BYTES <= self.payload_bytes <= 1452:
            raise ConfigError(None, "utp.payload_bytes", "must be within 150..1452")
        if not self.payload_bytes <= self.max_payload_bytes <= 1452:
            raise ConfigError(None, "utp.max_payload_bytes", "must be within payload_bytes..1452")
        if self.send_buffer_bytes < self.payload_bytes or self.reorder_buffer_bytes < self.payload_bytes:
            raise ConfigError(None, "utp.buffers", "buffers must hold at least one packet")
        if self.min_timeout_s <= 0 or self.initial_timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ConfigError(None, "utp.timeouts", "must be > 0")
