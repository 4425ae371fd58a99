"""An in-memory network that drives several pure :class:`minibt.session.Session` objects.

No sockets, no threads, no wall clock: a :class:`SimNet` owns a FakeClock and an event heap and
plays the part of ``minibt.loop.EventLoop`` for every endpoint (STYLE.md section 9, P5/P6/P10):

* ``Dial`` -> after one link latency the dialled endpoint gets ``on_incoming`` (with the dial's
  transport) and the dialler ``on_connected``; a TCP dial nobody listens for is refused
  (``CONNECT_FAILED``); a uTP dial sends its SYN every ``UTP_SYN_INTERVAL_S`` until one arrives
  where a uTP socket listens (a session whose transports include "utp", as minibt's loop) and fails
  with ``CONNECT_FAILED`` after ``UTP_CONNECT_TIMEOUT_S`` (minibt's uTP ignores ICMP errors);
  ``net.log`` details and :meth:`SimNet.connections` say which transport each connection used;
* NATs (:meth:`SimNet.add_nat`): a home router in front of some peers, endpoint-independent and
  port-preserving for the uTP (UDP listen) socket, ephemeral ports for outgoing TCP; inbound TCP is
  dropped (no port forward: the dialler's connect times out), an inbound uTP SYN passes only through
  a hole the inside peer punched by sending uTP to that very endpoint within ``HOLE_LIFETIME_S``;
* outgoing bytes are pulled with ``data_to_send`` while the connection's send window has room,
  split into random chunk sizes and delivered after ``len/rate + latency``; a full window is
  backpressure (``on_writable`` once it drains, like the loop after a socket flush);
* received bytes are handed over as a memoryview of a reused receive buffer that is poisoned
  right after the call, as the real loop reuses its ``recv_into`` buffer;
* ``Close`` -> the other side sees ``CLOSED_BY_REMOTE`` after the data already in flight;
* ``HashPiece`` and ``SaveResume`` -> a synchronous :class:`minibt.workers.InlineHasher`, result
  delivered as the next event (P10); ``Announce`` -> an optional in-memory tracker that returns every other peer;
* the clock jumps to the next delivery or tick; every endpoint is ticked every ``TICK_S``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers import FakeClock

from minibt.actions import Action, Announce, Close, Dial
from minibt.effects import Flush, HashPiece, SaveResume
from minibt.errors import CloseReason, RemoteProtocolError
from minibt.handshake import Handshake, HandshakeReceived, InfoHashReceived, make_reserved, supports_fast
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.peer import PeerConnection, PeerSource
from minibt.session import Session
from minibt.settings import SessionConfig, TorrentConfig, Transport
from minibt.torrent import Torrent
from minibt.tracker import AnnounceJob, AnnounceResult
from minibt.urls import Addr
from minibt.utp_config import UtpConfig
from minibt.wire import PeerWire
from minibt.wire_codec import Cancel, Interested, Request
from minibt.workers import CallResult, HashJob, HashResult, InlineHasher

KiB = 1024
MiB = 1024 * 1024
TICK_S = 0.25  # minibt.loop.TICK_S: the loop ticks the session at least this often
RECV_BUF = 256 * KiB  # minibt.loop.RECV_BUF
SIM_TRACKER = "http://tracker.sim/announce"
_POISON = b"\xee" * RECV_BUF
_UTP = UtpConfig()
UTP_CONNECT_TIMEOUT_S = _UTP.connect_timeout_s  # a uTP dial whose SYNs all go unanswered fails after this
UTP_SYN_SENDS = _UTP.syn_resends + 1  # the SYN and its resends ...
UTP_SYN_INTERVAL_S = _UTP.connect_timeout_s / UTP_SYN_SENDS  # ... this far apart (minibt.utp.UtpConnection)
# Linux tcp_syn_retries=6: SYNs at 0, 1, 3, 7, 15, 31, 63 s, ETIMEDOUT at 127 s.  minibt's loop has no
# connect timeout of its own, so a dropped SYN is normally ended earlier by the session's handshake timer.
TCP_CONNECT_TIMEOUT_S = 127.0
# How long a NAT keeps a UDP mapping's filter open for an endpoint after the last packet the inside
# peer sent it: Linux conntrack's nf_conntrack_udp_timeout for a flow not yet answered (nftables
# masquerade, most home routers); RFC 4787 REQ-5 asks for >= 120 s, real routers often use 30-60 s.
HOLE_LIFETIME_S = 30.0


@dataclass(frozen=True)
class LinkSpec:
    """What one endpoint's side of every connection looks like."""

    up_Bps: float = 8 * MiB  # bytes/s this endpoint sends on each connection
    latency_s: float = 0.002  # one-way delay of what it sends
    window: int = 256 * KiB  # bytes in flight per connection and direction (socket buffers)
    chunk: tuple[int, int] | None = (256, 40 * KiB)  # random delivery split sizes; None: as pulled


# ---------------------------------------------------------------------- endpoints


class Endpoint:
    """The loop-facing surface of a Session; subclasses are real sessions or scripted peers."""

    def __init__(self, name: str, addr: Addr, link: LinkSpec) -> None:
        self.name = name
        self.addr = addr
        self.link = link
        self.dead = False
        self.drop_inflight = False  # set by SimNet.kill: what it already sent is lost (reset)
        self.nat: Nat | None = None  # set by SimNet: the NAT it is behind; ``addr`` is then private

    @property
    def ip(self) -> str:
        return self.addr[0]

    @property
    def utp(self) -> bool:
        """It has a uTP socket: dials over uTP and accepts uTP SYNs (the loop's UtpPeers exists)."""
        return True

    def on_incoming(self, addr: Addr, *, now: float, transport: Transport = Transport.TCP) -> int | None:
        raise NotImplementedError

    def on_connected(self, cid: int, *, now: float) -> None:
        raise NotImplementedError

    def on_data(self, cid: int, data: memoryview, *, now: float) -> None:
        raise NotImplementedError

    def on_closed(self, cid: int, reason: CloseReason, detail: str, *, now: float) -> None:
        raise NotImplementedError

    def on_writable(self, cid: int, *, now: float) -> None:
        pass

    def data_to_send(self, cid: int, limit: int, *, now: float) -> bytes:
        raise NotImplementedError

    def take_actions(self) -> list[Action]:
        return []

    def take_dirty(self) -> set[int]:
        return set()

    def tick(self, *, now: float) -> None:
        pass

    def on_hash_result(self, res: HashResult | CallResult, *, now: float) -> None:
        pass

    def on_announce_result(self, info_hash: bytes, job: AnnounceJob, result: AnnounceResult, *, now: float) -> None:
        pass

    def hash(self, job: HashJob | SaveResume) -> list[HashResult | CallResult]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.addr[0]}:{self.addr[1]}>"


class SimPeer(Endpoint):
    """A real minibt Session on the simulated network."""

    def __init__(
        self,
        name: str,
        addr: Addr,
        link: LinkSpec,
        *,
        rng: random.Random,
        clock: FakeClock,
        config: SessionConfig,
        fast: bool = True,
        extension: bool = True,
    ) -> None:
        super().__init__(name, addr, link)
        self.session = Session(rng=rng, config=config, wall_clock=clock.wall)
        self.session.set_listen(addr[0], addr[1])
        self.session.reserved = make_reserved(fast=fast, extension=extension)
        self.hasher = InlineHasher()
        self.seen: dict[int, PeerConnection] = {}  # every connection it ever had, for wire stats
        self._dirty: set[int] = set()  # connections with bytes to send (Flush actions)

    @property
    def torrent(self) -> Torrent:
        """The (single) torrent of this session."""
        (t,) = self.session.torrents.values()
        return t

    def _remember(self, cid: int) -> None:
        conn = self.session.conns.get(cid)
        if conn is not None:
            self.seen[cid] = conn

    @property
    def utp(self) -> bool:
        # minibt.loop: UtpPeers only when "utp" is in the session's transports; without it a uTP dial
        # fails at once ("uTP is not enabled") and uTP datagrams are dropped (the SYN goes unanswered)
        return Transport.UTP in self.session.config.transports

    def on_incoming(self, addr: Addr, *, now: float, transport: Transport = Transport.TCP) -> int | None:
        cid = self.session.on_incoming(addr, now=now, transport=transport)
        if cid is not None:
            self._remember(cid)
        return cid

    def on_connected(self, cid: int, *, now: float) -> None:
        self.session.on_connected(cid, now=now)

    def on_data(self, cid: int, data: memoryview, *, now: float) -> None:
        self.session.on_data(cid, data, now=now)

    def on_closed(self, cid: int, reason: CloseReason, detail: str, *, now: float) -> None:
        self.session.on_closed(cid, reason, detail, now=now)

    def on_writable(self, cid: int, *, now: float) -> None:
        self.session.on_writable(cid, now=now)

    def data_to_send(self, cid: int, limit: int, *, now: float) -> bytes:
        return self.session.data_to_send(cid, limit, now=now)

    def take_actions(self) -> list[Action]:
        """The session's actions, with Flush ones moved into the dirty set (what the loop does)."""
        acts: list[Action] = []
        for a in self.session.take_actions():
            if isinstance(a, Flush):
                self._dirty.add(a.cid)
                continue
            if isinstance(a, Dial):
                self._remember(a.cid)
            acts.append(a)
        return acts

    def take_dirty(self) -> set[int]:
        d, self._dirty = self._dirty, set()
        return d

    def tick(self, *, now: float) -> None:
        self.session.tick(now=now)

    def on_hash_result(self, res: HashResult | CallResult, *, now: float) -> None:
        self.session.on_hash_result(res, now=now)

    def on_announce_result(self, info_hash: bytes, job: AnnounceJob, result: AnnounceResult, *, now: float) -> None:
        self.session.on_announce_result(info_hash, job, result, None, now=now)

    def hash(self, job: HashJob | SaveResume) -> list[HashResult | CallResult]:
        if isinstance(job, SaveResume):  # the fsync and the resume file, as a worker would
            self.hasher.run(job.run, job)
        else:
            self.hasher.submit(job)
        return self.hasher.results()

    # ------------------------------------------------------------------ observations

    def wire_stats(self) -> dict[str, int]:
        """Wire counters summed over every connection this session ever had."""
        total: dict[str, int] = {}
        for conn in self.seen.values():
            if conn.wire is None:
                continue
            for k, v in conn.wire.stats().items():
                total[k] = total.get(k, 0) + v
        return total

    def wire_stats_with(self, ip: str) -> dict[str, int]:
        total: dict[str, int] = {}
        for conn in self.seen.values():
            if conn.wire is None or conn.ip != ip:
                continue
            for k, v in conn.wire.stats().items():
                total[k] = total.get(k, 0) + v
        return total

    def conn_to(self, ip: str) -> PeerConnection | None:
        """The live, handshaken connection with the peer at ``ip``, if any."""
        for conn in self.session.conns.values():
            if conn.ip == ip and conn.wire is not None:
                return conn
        return None

    def close_reasons(self) -> list[tuple[str, CloseReason]]:
        return [(addr[0], reason) for _, addr, reason, _ in self.session.closed_log]


class RawPeer(Endpoint):
    """A scripted remote built from minibt's own Handshake/PeerWire machines, without a Session.

    ``mode="silent"``: accepts or makes connections and never sends a byte.
    ``mode="snub"``: completes the handshake, announces every piece, unchokes, accepts requests
    and never answers them (a snubbing peer).
    """

    def __init__(self, name: str, addr: Addr, link: LinkSpec, meta: Metainfo, *, mode: str, peer_id: bytes,
                 utp: bool = True) -> None:
        super().__init__(name, addr, link)
        self._utp = utp
        if mode not in ("silent", "snub"):
            raise ValueError(mode)
        self.meta = meta
        self.mode = mode
        self.peer_id = peer_id
        self.reserved = make_reserved(fast=True, extension=False)
        self._next_cid = 1
        self._hs: dict[int, Handshake] = {}
        self._wire: dict[int, PeerWire] = {}
        self._out: dict[int, bytearray] = {}
        self._actions: list[Action] = []
        self._dirty: set[int] = set()
        self.open: set[int] = set()
        self.bytes_in: dict[int, int] = {}  # per connection
        self.requests: list[tuple[float, Request]] = []  # (arrival time, message)
        self.cancels: list[tuple[float, Cancel]] = []
        self.interested = 0
        self.closed: list[tuple[int, CloseReason]] = []
        self.transport_of: dict[int, Transport] = {}  # per connection

    @property
    def utp(self) -> bool:
        return self._utp

    def dial(self, addr: Addr, *, now: float, transport: Transport = Transport.TCP) -> int:
        cid = self._new(now, info_hash=self.meta.info_hash)
        self.transport_of[cid] = transport
        self._actions.append(Dial(cid, addr, transport))
        return cid

    def _new(self, now: float, info_hash: bytes | None) -> int:
        cid = self._next_cid
        self._next_cid += 1
        self.open.add(cid)
        self._out[cid] = bytearray()
        if self.mode != "silent":
            self._hs[cid] = Handshake(peer_id=self.peer_id, reserved=self.reserved, info_hash=info_hash, now=now)
        return cid

    def on_incoming(self, addr: Addr, *, now: float, transport: Transport = Transport.TCP) -> int | None:
        cid = self._new(now, info_hash=None)
        self.transport_of[cid] = transport
        return cid

    def on_connected(self, cid: int, *, now: float) -> None:
        hs = self._hs.get(cid)
        if hs is not None:
            hs.start()
            self._out[cid] += hs.data_to_send()
            self._dirty.add(cid)

    def on_data(self, cid: int, data: memoryview, *, now: float) -> None:
        if cid not in self.open:
            return
        self.bytes_in[cid] = self.bytes_in.get(cid, 0) + len(data)
        if self.mode == "silent":
            return
        try:
            self._receive(cid, bytes(data), now)
        except RemoteProtocolError as e:
            self._close(cid, e.reason, e.detail)

    def _receive(self, cid: int, data: bytes, now: float) -> None:
        hs = self._hs.get(cid)
        if hs is not None:
            for ev in hs.receive_data(data, now=now):
                if isinstance(ev, InfoHashReceived) and not hs.outgoing:
                    if ev.info_hash != self.meta.info_hash:
                        self._close(cid, CloseReason.UNKNOWN_INFO_HASH, "not ours")
                        return
                    hs.accept(ev.info_hash)
                elif isinstance(ev, HandshakeReceived):
                    self._out[cid] += hs.data_to_send()
                    wire = PeerWire(
                        num_pieces=self.meta.num_pieces,
                        piece_length=self.meta.piece_length,
                        total_length=self.meta.total_length,
                        fast=supports_fast(ev.reserved),
                        extension=False,
                        now=now,
                    )
                    self._wire[cid] = wire
                    if wire.fast:
                        wire.send_have_all()
                    else:
                        wire.send_bitfield(_all_bits(self.meta.num_pieces))
                    wire.unchoke()
                    data = hs.leftover()
                    del self._hs[cid]
                    break
            else:
                self._out[cid] += hs.data_to_send()
                self._dirty.add(cid)
                return
        self._dirty.add(cid)
        wire = self._wire[cid]
        for msg in wire.receive_data(data, now=now):
            if isinstance(msg, Request):
                self.requests.append((now, msg))  # and never answered: snubbing
            elif isinstance(msg, Cancel):
                self.cancels.append((now, msg))
            elif isinstance(msg, Interested):
                self.interested += 1

    def _close(self, cid: int, reason: CloseReason, detail: str) -> None:
        if cid in self.open:
            self.open.discard(cid)
            self.closed.append((cid, reason))
            self._actions.append(Close(cid, reason, detail))

    def on_closed(self, cid: int, reason: CloseReason, detail: str, *, now: float) -> None:
        if cid in self.open:
            self.open.discard(cid)
            self.closed.append((cid, reason))

    def data_to_send(self, cid: int, limit: int, *, now: float) -> bytes:
        if cid not in self.open:
            return b""
        out = self._out[cid]
        wire = self._wire.get(cid)
        if wire is not None:
            out += wire.data_to_send(max(0, limit - len(out)), now=now)
        data = bytes(out[:limit])
        del out[:limit]
        return data

    def take_actions(self) -> list[Action]:
        acts, self._actions = self._actions, []
        return acts

    def take_dirty(self) -> set[int]:
        d, self._dirty = self._dirty, set()
        return d


def _all_bits(n: int) -> bytes:
    bits = bytearray(b"\xff" * ((n + 7) // 8))
    spare = len(bits) * 8 - n
    if spare:
        bits[-1] &= (0xFF << spare) & 0xFF
    return bytes(bits)


# ---------------------------------------------------------------------- the network


@dataclass(eq=False)
class Nat:
    """A home router: one public IP in front of the endpoints added with ``nat=`` (their addresses are private).

    Mapping: endpoint-independent; the uTP socket (the UDP listen port) keeps its port number when it
    is free on the public side, outgoing TCP gets an ephemeral public port per connection.  Filtering
    (address- and port-dependent): inbound TCP is always dropped (no port forward); an inbound uTP
    SYN to a mapped port passes only when the inside peer sent uTP to the sender's endpoint within
    ``hole_lifetime_s`` (or has a uTP connection with it open: its keep-alives refresh the hole).
    No hairpinning: inside peers reach each other by their private addresses only.
    """

    name: str
    public_ip: str
    hole_lifetime_s: float = HOLE_LIFETIME_S
    udp_ports: dict[Addr, int] = field(default_factory=dict)  # inside UDP socket -> public port
    holes: dict[tuple[Addr, Addr], float] = field(default_factory=dict)  # (inside, remote) -> last uTP sent
    counters: dict[str, int] = field(default_factory=lambda: {
        "tcp_dropped": 0, "utp_dropped": 0, "utp_passed": 0, "tcp_out": 0, "utp_out": 0})
    _tcp_ports: Iterator[int] = field(default_factory=lambda: itertools.count(50000))

    def map_udp(self, inside: Addr) -> int:
        """The public port of the inside UDP socket ``inside`` (port-preserving when free)."""
        port = self.udp_ports.get(inside)
        if port is None:
            used = set(self.udp_ports.values())
            port = inside[1]
            while port in used:
                port = 1024 + (port + 1 - 1024) % (65536 - 1024)
            self.udp_ports[inside] = port
        return port

    def inside_of(self, port: int) -> Addr | None:
        """The inside UDP socket mapped to public ``port``, if any."""
        for inside, p in self.udp_ports.items():
            if p == port:
                return inside
        return None

    def tcp_port(self) -> int:
        return next(self._tcp_ports)

    def punch(self, inside: Addr, remote: Addr, now: float) -> None:
        """The inside socket sent a uTP packet to ``remote``: its hole for ``remote`` is (re)opened."""
        self.holes[(inside, remote)] = now

    def hole_open(self, inside: Addr, remote: Addr, now: float) -> bool:
        t = self.holes.get((inside, remote))
        return t is not None and now - t <= self.hole_lifetime_s

    def stats(self) -> dict[str, int]:
        return dict(self.counters, mappings=len(self.udp_ports))


@dataclass(frozen=True)
class SimConn:
    """One connection as an endpoint has it (:meth:`SimNet.connections`)."""

    cid: int
    transport: Transport
    outgoing: bool
    remote: Addr  # the other side's address as this endpoint sees it (a NAT's public endpoint for a NATed peer)
    open: bool


@dataclass(eq=False)
class _End:
    """One side of a simulated TCP or uTP connection, and the pipe of what it sends."""

    ep: Endpoint
    cid: int
    peer: _End | None = None
    transport: Transport = Transport.TCP
    outgoing: bool = False
    remote: Addr | None = None  # the dialled address, or the source the listener was given
    dialled_at: float = 0.0
    connected: bool = False  # the connect finished (for a refused one too: it ends with EOF)
    closed: bool = False  # this side's connection is gone (closed locally, reset, or EOF seen)
    free_at: float = 0.0  # when the pipe finishes serialising what is queued
    inflight: int = 0  # bytes sent and not yet delivered
    blocked: bool = False  # the window filled up: flush + on_writable once it drains
    sent: int = 0


@dataclass
class SimTracker:
    """In-memory tracker: every announce returns the other peers of the swarm."""

    swarms: dict[bytes, dict[Addr, int]] = field(default_factory=dict)
    announces: list[tuple[Addr, str]] = field(default_factory=list)

    def announce(self, addr: Addr, info_hash: bytes, event: str, left: int) -> AnnounceResult:
        self.announces.append((addr, event))
        swarm = self.swarms.setdefault(info_hash, {})
        if event == "stopped":
            swarm.pop(addr, None)
            peers: tuple[Addr, ...] = ()
        else:
            swarm[addr] = left
            peers = tuple(a for a in swarm if a != addr)
        seeds = sum(1 for v in swarm.values() if v == 0)
        return AnnounceResult(1800, None, peers, complete=seeds, incomplete=len(swarm) - seeds)


class SimNet:
    """Drives endpoints with simulated links and time; see the module docstring."""

    def __init__(
        self,
        clock: FakeClock,
        rng: random.Random,
        *,
        link: LinkSpec | None = None,
        tracker: bool = True,
        hash_delay_s: float = 0.0,
        tcp_connect_timeout_s: float = TCP_CONNECT_TIMEOUT_S,
    ) -> None:
        self.clock = clock
        self.rng = rng
        self.link = link or LinkSpec()
        self.tracker = SimTracker() if tracker else None
        self.hash_delay_s = hash_delay_s
        self.tcp_connect_timeout_s = tcp_connect_timeout_s
        self.endpoints: list[Endpoint] = []
        self.nats: dict[str, Nat] = {}
        self._nat_of_ip: dict[str, Nat] = {}  # public IP -> NAT
        self._listeners: dict[tuple[str | None, Addr], Endpoint] = {}  # (NAT name or None, address)
        self._ends: dict[tuple[int, int], _End] = {}
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self._next_tick = clock.now()
        self._ports = itertools.count(40000)
        self._rbuf = bytearray(RECV_BUF)
        self._rview = memoryview(self._rbuf)
        self._hash_pending: dict[int, list[HashResult | CallResult]] = {}
        self.checks: list[Callable[[], None]] = []  # invariants run after every event and tick
        self.log: list[tuple[float, str, int, str, str]] = []  # (t, endpoint, cid, what, detail)
        self.counters = {"events": 0, "deliveries": 0, "bytes": 0, "ticks": 0, "dials": 0, "refused": 0,
                         "dropped": 0, "utp_syns": 0}

    @property
    def now(self) -> float:
        now: float = self.clock.now()
        return now

    # ------------------------------------------------------------------ building the swarm

    def add_peer(
        self,
        name: str,
        ip: str,
        port: int = 6881,
        *,
        link: LinkSpec | None = None,
        config: SessionConfig | None = None,
        fast: bool = True,
        extension: bool = True,
        nat: Nat | None = None,
    ) -> SimPeer:
        """A minibt session listening on ``ip:port`` (TCP and, when its transports have it, uTP);
        behind ``nat`` that address is private (see :class:`Nat`)."""
        cfg = config or SessionConfig(torrent=TorrentConfig(fsync=False))
        ep = SimPeer(
            name,
            (ip, port),
            link or self.link,
            rng=random.Random(self.rng.getrandbits(64)),
            clock=self.clock,
            config=cfg,
            fast=fast,
            extension=extension,
        )
        self._register(ep, nat)
        return ep

    def add_raw(self, name: str, ip: str, meta: Metainfo, *, mode: str, port: int = 6881,
                link: LinkSpec | None = None, nat: Nat | None = None, utp: bool = True) -> RawPeer:
        peer_id = b"-RAW001-" + bytes(self.rng.getrandbits(8) for _ in range(12))
        ep = RawPeer(name, (ip, port), link or self.link, meta, mode=mode, peer_id=peer_id, utp=utp)
        self._register(ep, nat)
        return ep

    def add_nat(self, name: str, public_ip: str, *, hole_lifetime_s: float = HOLE_LIFETIME_S) -> Nat:
        """A home router with ``public_ip``; put peers behind it with ``add_peer(..., nat=...)``."""
        if name in self.nats or public_ip in self._nat_of_ip:
            raise ValueError(f"NAT {name} / {public_ip} already exists")
        if any(realm is None and addr[0] == public_ip for realm, addr in self._listeners):
            raise ValueError(f"{public_ip} is a public peer's address")
        nat = Nat(name, public_ip, hole_lifetime_s=hole_lifetime_s)
        self.nats[name] = nat
        self._nat_of_ip[public_ip] = nat
        return nat

    def _register(self, ep: Endpoint, nat: Nat | None = None) -> None:
        if nat is None and ep.ip in self._nat_of_ip:
            raise ValueError(f"{ep.ip} is the public address of NAT {self._nat_of_ip[ep.ip].name}")
        key = (None if nat is None else nat.name, ep.addr)
        if key in self._listeners:
            raise ValueError(f"address {ep.addr} already in use")
        ep.nat = nat
        if nat is not None:
            nat.map_udp(ep.addr)
        self.endpoints.append(ep)
        self._listeners[key] = ep

    def public_addr(self, ep: Endpoint) -> Addr:
        """Where the outside sees ``ep``'s uTP socket (its listen port): a NAT's public IP and the mapped
        port, else its own address.  A uTP dial there reaches ``ep`` only through a hole (:class:`Nat`)."""
        if ep.nat is None:
            return ep.addr
        return ep.nat.public_ip, ep.nat.map_udp(ep.addr)

    def announced_addr(self, ep: Endpoint) -> Addr:
        """What a tracker records for ``ep``: the source IP of its announce and the port it announces."""
        return ep.addr if ep.nat is None else (ep.nat.public_ip, ep.addr[1])

    def connections(self, ep: Endpoint, *, open_only: bool = False) -> list[SimConn]:
        """Every connection of ``ep`` that came up (both sides had it); a cid redialled shows its last attempt."""
        out = []
        for (epid, cid), end in self._ends.items():
            if epid != id(ep) or end.peer is None or end.remote is None:
                continue
            if open_only and end.closed:
                continue
            out.append(SimConn(cid, end.transport, end.outgoing, end.remote, not end.closed))
        return out

    def transport_of(self, ep: Endpoint, cid: int) -> Transport | None:
        """The transport of ``ep``'s connection ``cid`` (dialled or accepted), None if unknown."""
        end = self._ends.get((id(ep), cid))
        return None if end is None else end.transport

    def add_torrent(
        self, peer: SimPeer, meta: Metainfo, download_dir: Path, *, mode: str, resume_path: Path | None = None,
        config: TorrentConfig | None = None,
    ) -> Torrent:
        t = peer.session.add_torrent(
            meta, str(download_dir), mode=mode, resume_path=None if resume_path is None else str(resume_path),
            now=self.now, config=config,
        )
        self._settle(peer)
        return t

    def add_peers(self, peer: SimPeer, addrs: Iterable[Addr]) -> None:
        peer.session.add_peers(peer.torrent.info_hash, list(addrs), PeerSource.USER, now=self.now)
        self._settle(peer)

    def dial(self, raw: RawPeer, addr: Addr, transport: Transport = Transport.TCP) -> int:
        cid = raw.dial(addr, now=self.now, transport=transport)
        self._settle(raw)
        return cid

    def session_dial(self, peer: SimPeer, addr: Addr, source: PeerSource = PeerSource.USER) -> int | None:
        """``peer.session.dial`` for its torrent, now (its transport is the first of the session's
        transports); the connection id, None when the session declined."""
        cid = peer.session.dial(peer.torrent, addr, source, now=self.now)
        self._settle(peer)
        return cid

    def stop(self, ep: SimPeer) -> None:
        """Graceful shutdown, like EventLoop.shutdown: Session.stop (closes peers, announces 'stopped',
        saves resume data once the hash results in flight are handled), then the endpoint leaves."""
        ep.session.stop(now=self.now)
        self._settle(ep)
        for res in self._hash_pending.pop(id(ep), []):
            ep.on_hash_result(res, now=self.now)
            self._settle(ep)
        self.kill(ep, reset=False)

    def kill(self, ep: Endpoint, *, reset: bool = True) -> None:
        """The endpoint vanishes: its peers see their connections end, nobody answers its address.

        ``reset``: a crash; bytes it sent that are still in flight are lost.
        """
        if ep.dead:
            return
        ep.dead = True
        ep.drop_inflight = reset
        self._hash_pending.pop(id(ep), None)
        self._listeners.pop((None if ep.nat is None else ep.nat.name, ep.addr), None)
        for end in list(self._ends.values()):
            if end.ep is ep and not end.closed:
                self._last_packet(end)
                end.closed = True
                if end.peer is None or end.peer.closed:
                    continue
                if reset:
                    self._at(self.now + ep.link.latency_s, self._ev_fin, end.peer, CloseReason.IO_ERROR, "reset")
                else:
                    t = max(self.now, end.free_at) + ep.link.latency_s
                    self._at(t, self._ev_fin, end.peer, CloseReason.CLOSED_BY_REMOTE, "connection closed by peer")

    # ------------------------------------------------------------------ running

    def run_until(self, pred: Callable[[], bool], max_s: float) -> bool:
        """Advance time event by event until ``pred()`` holds (True) or ``max_s`` passed (False)."""
        deadline = self.now + max_s
        while not pred():
            if not self.clock.jump_to_next(self._next_tick, self._heap[0][0] if self._heap else None, end=deadline):
                return pred()
            self._run_due()
        return True

    def run_for(self, dt: float) -> None:
        self.run_until(lambda: False, dt)

    def must_run_until(self, pred: Callable[[], bool], max_s: float) -> None:
        """``run_until`` that fails the test, with :meth:`describe` as the message, when ``max_s`` passes first."""
        if not self.run_until(pred, max_s):
            raise AssertionError(f"not met within {max_s} simulated seconds\n{self.describe()}")

    def _run_due(self) -> None:
        now = self.now
        if now >= self._next_tick:
            while self._next_tick <= now:
                self._next_tick += TICK_S
            self.counters["ticks"] += 1
            for ep in list(self.endpoints):
                if not ep.dead:
                    ep.tick(now=now)
                    self._settle(ep)
            self._check()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, fn, args = heapq.heappop(heap)
            self.counters["events"] += 1
            fn(*args)
            self._check()

    def _check(self) -> None:
        for c in self.checks:
            c()

    def _at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn, args))

    # ------------------------------------------------------------------ the loop's job

    def _settle(self, ep: Endpoint) -> None:
        """Perform the endpoint's actions and drain its dirty connections until it is quiet."""
        for _ in range(10_000):
            acts = ep.take_actions()
            for a in acts:
                self._perform(ep, a)
            dirty = ep.take_dirty()
            for cid in sorted(dirty):
                end = self._ends.get((id(ep), cid))
                if end is not None and end.peer is not None and self._flush(end):
                    ep.on_writable(cid, now=self.now)
            if not acts and not dirty:
                return
        raise AssertionError(f"{ep} never settles: it keeps producing actions or output")

    def _perform(self, ep: Endpoint, a: Action) -> None:
        now = self.now
        if isinstance(a, Dial):
            self.counters["dials"] += 1
            tr = Transport(a.transport)
            end = _End(ep, a.cid, transport=tr, outgoing=True, remote=a.addr, dialled_at=now)
            self._ends[(id(ep), a.cid)] = end
            self.log.append((now, ep.name, a.cid, "dial", f"{a.addr[0]}:{a.addr[1]} {tr}"))
            if tr is Transport.TCP:
                self._at(now + ep.link.latency_s, self._ev_connect, end, a.addr)
            elif not ep.utp:
                self._at(now, self._ev_fin, end, CloseReason.CONNECT_FAILED, "uTP is not enabled")
            else:
                # minibt.utp: the SYN, resent while unanswered, then ConnectionTimedOut -> CONNECT_FAILED
                for k in range(UTP_SYN_SENDS):
                    self._at(now + k * UTP_SYN_INTERVAL_S, self._ev_syn_sent, end, a.addr)
                self._at(now + UTP_CONNECT_TIMEOUT_S, self._ev_connect_timeout, end, "uTP connect timed out")
        elif isinstance(a, Close):
            self.log.append((now, ep.name, a.cid, "close", f"{a.reason.name} {a.detail}"))
            closing = self._ends.get((id(ep), a.cid))
            if closing is not None and not closing.closed:
                self._last_packet(closing)
                closing.closed = True
                if closing.peer is not None and not closing.peer.closed:
                    # FIN after the bytes already handed to the "kernel"
                    t = max(now, closing.free_at) + ep.link.latency_s
                    self._at(t, self._ev_fin, closing.peer, CloseReason.CLOSED_BY_REMOTE, "connection closed by peer")
        elif isinstance(a, HashPiece | SaveResume):
            for res in ep.hash(a.job if isinstance(a, HashPiece) else a):
                self._hash_pending.setdefault(id(ep), []).append(res)
                self._at(now + self.hash_delay_s, self._ev_hash, ep, res)
        elif isinstance(a, Announce):
            if self.tracker is not None:
                result = self.tracker.announce(self.announced_addr(ep), a.info_hash, a.params.event, a.params.left)
                self._at(now + 2 * ep.link.latency_s, self._ev_announce, ep, a.info_hash, a.job, result)

    def _flush(self, end: _End) -> bool:
        """Pull bytes while the window has room; True when the endpoint had nothing more to send."""
        ep, window = end.ep, end.ep.link.window
        if end.closed:
            return False
        while end.inflight < window:
            data = ep.data_to_send(end.cid, window - end.inflight, now=self.now)
            if not data:
                end.blocked = False
                return True
            self._transmit(end, data)
        end.blocked = True
        return False

    def _transmit(self, end: _End, data: bytes) -> None:
        link = end.ep.link
        now = self.now
        n = len(data)
        pos = 0
        while pos < n:
            if link.chunk is None:
                k = n
            else:
                k = self.rng.randint(*link.chunk)
            piece = data[pos : pos + k]
            pos += len(piece)
            start = max(now, end.free_at)
            end.free_at = start + len(piece) / link.up_Bps
            end.inflight += len(piece)
            end.sent += len(piece)
            self._at(end.free_at + link.latency_s, self._ev_deliver, end, piece)

    # ------------------------------------------------------------------ events

    def _route(self, ep: Endpoint, addr: Addr, transport: Transport) -> tuple[Endpoint | None, Addr, str]:
        """Where a connect (TCP SYN or uTP SYN) from ``ep`` to ``addr`` arrives now:
        (listener, source address it sees, "") or (None, _, why it was dropped) or (None, _, "") when
        nothing is there (TCP: refused)."""
        now = self.now
        inside = ep.nat
        if inside is not None:
            dst = self._listeners.get((inside.name, addr))
            if dst is not None:  # the same LAN: no translation
                return dst, ep.addr if transport is Transport.UTP else (ep.ip, next(self._ports)), ""
            if transport is Transport.UTP:  # (the hole was punched when the SYN left: _ev_syn_sent)
                src = (inside.public_ip, inside.map_udp(ep.addr))
            else:
                src = (inside.public_ip, inside.tcp_port())
                inside.counters["tcp_out"] += 1
        else:
            src = ep.addr if transport is Transport.UTP else (ep.ip, next(self._ports))
        nat = self._nat_of_ip.get(addr[0])
        if nat is not None:
            if transport is Transport.TCP:
                nat.counters["tcp_dropped"] += 1
                return None, src, f"TCP to NAT {nat.name}: no port forward"
            if nat is inside:
                nat.counters["utp_dropped"] += 1
                return None, src, f"NAT {nat.name}: no hairpinning"
            target = nat.inside_of(addr[1])
            if target is None or not self._hole(nat, target, src, now):
                nat.counters["utp_dropped"] += 1
                return None, src, f"uTP to NAT {nat.name}: no hole for {src[0]}:{src[1]}"
            nat.counters["utp_passed"] += 1
            return self._listeners.get((nat.name, target)), src, ""
        dst = self._listeners.get((None, addr))
        if dst is None and any(realm is not None and a[0] == addr[0] for realm, a in self._listeners):
            return None, src, f"{addr[0]} is a private address behind a NAT"  # routed nowhere: dropped
        return dst, src, ""

    def _hole(self, nat: Nat, inside: Addr, remote: Addr, now: float) -> bool:
        if nat.hole_open(inside, remote, now):
            return True
        # an open uTP connection with ``remote`` keeps the hole open (data, ACKs, keep-alives every 29 s)
        return any(
            e.transport is Transport.UTP and e.ep.nat is nat and e.ep.addr == inside and e.remote == remote
            and e.peer is not None and not e.closed and not e.ep.dead
            for e in self._ends.values()
        )

    def _last_packet(self, end: _End) -> None:
        """``end`` closes: a NATed uTP socket's hole for the remote stays open from its last packet (the FIN)."""
        nat = end.ep.nat
        if nat is not None and end.transport is Transport.UTP and end.peer is not None and end.remote is not None:
            nat.punch(end.ep.addr, end.remote, self.now)

    def _dropped(self, end: _End, addr: Addr, why: str) -> None:
        self.counters["dropped"] += 1
        self.log.append((self.now, end.ep.name, end.cid, "dropped", f"{addr[0]}:{addr[1]} {end.transport} {why}"))

    def _ev_connect(self, end: _End, addr: Addr) -> None:
        """A TCP SYN arrives."""
        now = self.now
        ep = end.ep
        if end.closed or ep.dead:
            return
        dst, src, why = self._route(ep, addr, Transport.TCP)
        if why:  # a dropped SYN: the kernel resends it, then connect() fails with ETIMEDOUT
            self._dropped(end, addr, why)
            self._at(end.dialled_at + self.tcp_connect_timeout_s, self._ev_connect_timeout, end, "ETIMEDOUT")
            return
        if dst is None or dst.dead:
            self.log.append((now, ep.name, end.cid, "connect-failed", f"{addr[0]}:{addr[1]}"))
            self._at(now + ep.link.latency_s, self._ev_fin, end, CloseReason.CONNECT_FAILED, "connection refused")
            return
        self._accept(end, dst, src)

    def _ev_syn_sent(self, end: _End, addr: Addr) -> None:
        """A uTP SYN (or a resend) leaves ``end``'s socket: it punches the dialler's own NAT at once."""
        if end.closed or end.connected or end.ep.dead:
            return
        self.counters["utp_syns"] += 1
        nat = end.ep.nat
        if nat is not None and (nat.name, addr) not in self._listeners:
            nat.punch(end.ep.addr, addr, self.now)
            nat.counters["utp_out"] += 1
        self._at(self.now + end.ep.link.latency_s, self._ev_syn, end, addr)

    def _ev_syn(self, end: _End, addr: Addr) -> None:
        """A uTP SYN arrives; a dropped one is left to the resends and the connect timeout."""
        if end.closed or end.connected or end.ep.dead:
            return
        dst, src, why = self._route(end.ep, addr, Transport.UTP)
        if not why and (dst is None or dst.dead):
            why = "nobody listens"
        elif not why and dst is not None and not dst.utp:
            why = f"{dst.name} has no uTP"
        if why or dst is None:
            self._dropped(end, addr, why)
            return
        self._accept(end, dst, src)

    def _ev_connect_timeout(self, end: _End, detail: str) -> None:
        if end.closed or end.connected or end.ep.dead:
            return
        self.log.append((self.now, end.ep.name, end.cid, "connect-failed", f"{detail} {end.transport}"))
        self._ev_fin(end, CloseReason.CONNECT_FAILED, detail)

    def _accept(self, end: _End, dst: Endpoint, src: Addr) -> None:
        """The connect reached ``dst``, which sees it come from ``src``."""
        now = self.now
        ep = end.ep
        end.connected = True
        cid = dst.on_incoming(src, now=now, transport=end.transport)
        if cid is None:
            # The real loop accepts and closes at once: the dialler sees a connect, then EOF.
            self.counters["refused"] += 1
            self.log.append((now, dst.name, 0, "refused", f"{src[0]}:{src[1]} {end.transport}"))
            ep.on_connected(end.cid, now=now)
            self._at(now + dst.link.latency_s, self._ev_fin, end, CloseReason.CLOSED_BY_REMOTE, "refused")
            self._settle(ep)
            return
        other = _End(dst, cid, peer=end, transport=end.transport, remote=src, dialled_at=now, connected=True)
        end.peer = other
        self._ends[(id(dst), cid)] = other
        self.log.append((now, dst.name, cid, "accept", f"{src[0]}:{src[1]} {end.transport}"))
        self._settle(dst)
        ep.on_connected(end.cid, now=now)
        if self._flush(end):
            ep.on_writable(end.cid, now=now)
        self._settle(ep)

    def _ev_deliver(self, src: _End, data: bytes) -> None:
        now = self.now
        src.inflight -= len(data)
        dst = src.peer
        assert dst is not None
        if not dst.closed and not dst.ep.dead and not src.ep.drop_inflight:
            n = len(data)
            self.counters["deliveries"] += 1
            self.counters["bytes"] += n
            self._rbuf[:n] = data
            dst.ep.on_data(dst.cid, self._rview[:n], now=now)
            self._rbuf[:n] = _POISON[:n]  # whoever kept a view of the receive buffer sees garbage
            self._settle(dst.ep)
        if src.blocked and not src.closed and not src.ep.dead and src.inflight < src.ep.link.window:
            if self._flush(src):
                src.ep.on_writable(src.cid, now=now)
            self._settle(src.ep)

    def _ev_fin(self, end: _End, reason: CloseReason, detail: str) -> None:
        if end.closed:
            return
        self._last_packet(end)
        end.closed = True
        if end.ep.dead:
            return
        self.log.append((self.now, end.ep.name, end.cid, "closed", f"{reason.name} {detail}"))
        end.ep.on_closed(end.cid, reason, detail, now=self.now)
        self._settle(end.ep)

    def _ev_hash(self, ep: Endpoint, res: HashResult | CallResult) -> None:
        pending = self._hash_pending.get(id(ep), [])
        if ep.dead or not any(r is res for r in pending):
            return
        pending[:] = [r for r in pending if r is not res]
        ep.on_hash_result(res, now=self.now)
        self._settle(ep)

    def _ev_announce(self, ep: Endpoint, info_hash: bytes, job: AnnounceJob, result: AnnounceResult) -> None:
        if not ep.dead:
            ep.on_announce_result(info_hash, job, result, now=self.now)
            self._settle(ep)

    # ------------------------------------------------------------------ reporting

    def describe(self) -> str:
        """A short status of every endpoint, for assertion messages."""
        lines = [f"t={self.now:.2f} {self.counters}"]
        for ep in self.endpoints:
            if isinstance(ep, SimPeer) and ep.session.torrents:
                st = ep.torrent.status(self.now)
                lines.append(
                    f"  {ep.name}{' (dead)' if ep.dead else ''}: {st['state']} {st['have_pieces']}/{st['num_pieces']}"
                    f" peers={st['peers']} half_open={st['half_open']} cand={st['candidates']}"
                    f" down={st['downloaded']} up={st['uploaded']} wasted={st['wasted']}"
                    f" fails={st['hash_failures']} banned={st['banned']}"
                )
            else:
                lines.append(f"  {ep}")
        return "\n".join(lines)


# ---------------------------------------------------------------------- payloads


def make_payload(root: Path, layout: dict[str, int], seed: int) -> Path:
    """Write files of pseudo-random bytes under ``root`` (created); returns ``root``."""
    r = random.Random(seed)
    for rel, size in layout.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(r.randbytes(size))
    return root


def make_torrent(payload: Path, piece_length: int, trackers: tuple[str, ...] = (SIM_TRACKER,)) -> Metainfo:
    return parse_metainfo(create_torrent(str(payload), trackers=list(trackers), piece_length=piece_length))


def copy_payload(meta: Metainfo, src_dir: Path, dst_dir: Path) -> Path:
    """Copy a torrent's files from download dir ``src_dir`` to download dir ``dst_dir``."""
    shutil.copytree(src_dir / meta.name, dst_dir / meta.name)
    return dst_dir


def same_files(meta: Metainfo, a_dir: Path, b_dir: Path) -> bool:
    return all(
        Path(meta.file_path(str(a_dir), i)).read_bytes() == Path(meta.file_path(str(b_dir), i)).read_bytes()
        for i in range(len(meta.files))
    )
