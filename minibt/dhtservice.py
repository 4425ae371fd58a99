"""The session's DHT (BEP 5): one :class:`~minibt.dht.DhtNode`, which torrents it searches for and when.

Pure (STYLE.md).  The session creates it when ``SessionConfig.dht`` is on, hands it the datagrams
that start with ``d`` (krpc.py) and the results of bootstrap-host lookups, and calls :meth:`tick`
with the torrents that may use the DHT (never a private one, BEP 27).  Schedule: a torrent is
searched when it starts, again every DHT_REANNOUNCE_S (30 min, BEP 5: "announce ... periodically")
and every DHT_RETRY_S (5 min) while it downloads with few peers; a magnet still fetching its
metadata is searched every DHT_RETRY_S.  Each search of a torrent we serve ends with an
announce_peer of our listen port.  What a search finds comes out of :meth:`take_found`; the last
result per torrent is kept for ``status``.  ``dht.dat`` (our node id and the table's nodes) is read
by :func:`saved_state` and written by the caller from :meth:`save`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from minibt.magnetfetch import FetchState, MagnetFetch
from minibt.peer import PeerSource
from minibt.settings import BOOTSTRAP_ENV, TorrentState
from minibt.torrent import Torrent
from minibt.urls import Addr, is_ip, parse_host_port

TYPE_CHECKING = False
if TYPE_CHECKING:  # the node's modules load when a DHT starts (DhtService), not with --no-dht
    from minibt.dht import DhtNode, PeersFound

DHT_REANNOUNCE_S = 30 * 60.0  # BEP 5 / libtorrent: re-announce every 30 minutes
DHT_RETRY_S = 5 * 60.0  # convention: search again this soon while a torrent has few peers (or no metadata)
LOOKUP_RETRY_S = 60.0  # convention (dht.BOOTSTRAP_RETRY_S): bootstrap host names looked up again while the table is empty
FEW_PEERS = 5  # convention: below this many peers a downloading torrent searches every DHT_RETRY_S
DHT_FILE = "dht.dat"
MAX_DHT_FILE_BYTES = 64 * 1024  # convention: 160 buckets x 8 nodes x 38 bytes fits; a larger file is not ours
# The well-known public routers (libtorrent's and Transmission's defaults); a list given in the config,
# on the command line or in MINIBT_DHT_BOOTSTRAP replaces them.
DEFAULT_BOOTSTRAP: tuple[Addr, ...] = (
    ("router.bittorrent.com", 6881),
    ("router.utorrent.com", 6881),
    ("dht.transmissionbt.com", 6881),
    ("dht.libtorrent.org", 25401),
)




def bootstrap_nodes(given: tuple[Addr, ...] | None, env: str | None) -> tuple[Addr, ...]:
    """The DHT bootstrap list: ``given`` (command line or config file) if any, else the environment
    variable's list, else the public routers.  ValueError names a bad entry of the variable."""
    if given is not None:
        return given
    if env is None:
        return DEFAULT_BOOTSTRAP
    out = []
    for part in env.split(","):
        if part.strip():
            try:
                out.append(parse_host_port(part.strip()))
            except ValueError as e:
                raise ValueError(f"{BOOTSTRAP_ENV}: bad entry {part.strip()[:80]!r}: {e}") from None
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Wanted:
    """A torrent (or magnet) the DHT may search for now."""

    info_hash: bytes
    announce_port: int | None  # our listen port when we serve it; None for a magnet still fetching
    eager: bool  # few peers or no metadata yet: search every DHT_RETRY_S


@dataclass(slots=True)
class SearchResult:
    """A torrent's DHT peer search: when it began and what it found."""

    started_at: float
    peers: int = 0
    done: bool = False


def saved_state(data: bytes | None, rng: random.Random, *, now: float) -> tuple[bytes, list[tuple[bytes, Addr]]]:
    """Our node id and the nodes to contact from ``dht.dat`` (a fresh random id if absent or unusable)."""
    from minibt.routing import RoutingTable

    if data:
        try:
            return RoutingTable.from_bytes(data, rng, now=now)
        except ValueError:
            pass
    return rng.randbytes(20), []


def _searchable(t: Torrent) -> bool:
    """A torrent the DHT may search for: not private (BEP 27), downloading or seeding."""
    return not t.meta.private and (t.state is TorrentState.DOWNLOADING or t.state is TorrentState.SEEDING)


class DhtService:
    """The DHT node of a session, its bootstrap and its per-torrent search schedule."""

    def __init__(
        self, *, rng: random.Random, now: float, saved: bytes | None, bootstrap: tuple[Addr, ...], read_only: bool
    ) -> None:
        from minibt.dht import DhtNode

        node_id, nodes = saved_state(saved, rng, now=now)
        self.node: DhtNode = DhtNode(node_id=node_id, rng=rng, now=now, read_only=read_only)
        self._saved_nodes = [addr for _, addr in nodes]
        self._names = [(h, p) for h, p in bootstrap if not is_ip(h)]  # to resolve off the loop (loop.py)
        # Looked up again while the table is empty: at boot a Pi may start before its DNS answers, and a name
        # whose lookup failed (or never ran: the worker pool was busy) was never tried again.
        self._hosts, self._lookup_at = list(self._names), now
        self._addrs = [(h, p) for h, p in bootstrap if is_ip(h)]
        self._next: dict[bytes, float] = {}  # info-hash -> when to search next
        self.results: dict[bytes, SearchResult] = {}
        self._found: list[PeersFound] = []
        self.node.add_nodes(nodes, now=now)
        self.node.bootstrap(now=now, addrs=tuple(self._saved_nodes + self._addrs))

    def take_lookups(self) -> list[Addr]:
        """Bootstrap (host, port) pairs to resolve; each is handed out once."""
        out, self._names = self._names, []
        return out

    def resolved(self, addrs: list[Addr], *, now: float) -> None:
        """A bootstrap host name resolved to ``addrs``: look up our own id through them."""
        new = [a for a in addrs if a not in self._addrs]
        if new:
            self._addrs += new
            self.node.bootstrap(now=now, addrs=tuple(self._saved_nodes + self._addrs))

    def receive(self, data: bytes, addr: Addr, torrents: dict[bytes, Torrent], fetches: dict[bytes, MagnetFetch],
                *, now: float) -> None:
        """A KRPC datagram; the peers it completed go to their torrent or magnet fetch."""
        self.node.receive(data, addr, now=now)
        self._collect()
        self.deliver(torrents, fetches, now=now)

    def port_hint(self, addr: Addr, *, now: float) -> None:
        """A peer's BEP 5 PORT message: that node joins our table if it answers a ping."""
        self.node.ping(addr, now=now)

    def wanted(self, torrents: list[Torrent], fetches: list[MagnetFetch], listen_port: int) -> list[Wanted]:
        """Who may search now: non-private torrents that download or seed, magnets still fetching."""
        out = [
            Wanted(t.info_hash, listen_port or None, t.state is TorrentState.DOWNLOADING and len(t.peers) < FEW_PEERS)
            for t in torrents
            if _searchable(t)
        ]
        out += [Wanted(f.info_hash, None, True) for f in fetches if f.state is FetchState.FETCHING]
        return out

    def deliver(self, torrents: dict[bytes, Torrent], fetches: dict[bytes, MagnetFetch], *, now: float) -> None:
        """Found peers into their torrent's candidate pool (or the magnet fetch's), source DHT."""
        for f in self.take_found():
            t = torrents.get(f.info_hash)
            if t is not None:
                t.add_candidates(f.peers, PeerSource.DHT, now=now)
            elif (m := fetches.get(f.info_hash)) is not None:
                m.add_peers(list(f.peers), PeerSource.DHT)

    def next_deadline(self, torrents: dict[bytes, Torrent], fetches: dict[bytes, MagnetFetch], listen_port: int, *,
                      now: float) -> float:
        """When :meth:`tick` next has work: the node's timers, or the next search that is due (``now``
        for a torrent never searched yet)."""
        at = self.node.timers_at()
        nxt = self._next
        for t in torrents.values():  # (runs on every idle wake-up: no Wanted objects built)
            if _searchable(t) and (d := nxt.get(t.info_hash, now)) < at:
                at = d
        for f in fetches.values():
            if f.state is FetchState.FETCHING and (d := nxt.get(f.info_hash, now)) < at:
                at = d
        return at

    def tick(self, torrents: dict[bytes, Torrent], fetches: dict[bytes, MagnetFetch], listen_port: int, *,
             now: float) -> None:
        """Timers, and the searches that are due; found peers are delivered."""
        self.node.handle_timeout(now=now)
        if self._hosts and not self._names and not len(self.node.table) and now - self._lookup_at >= LOOKUP_RETRY_S:
            self._names, self._lookup_at = list(self._hosts), now
        live = set()
        for w in self.wanted(list(torrents.values()), list(fetches.values()), listen_port):
            live.add(w.info_hash)
            at = self._next.get(w.info_hash, now)
            if now < at or self.node.searching(w.info_hash):
                continue
            self.node.search(w.info_hash, now=now, announce_port=w.announce_port)
            self.results[w.info_hash] = SearchResult(now)
            self._next[w.info_hash] = now + (DHT_RETRY_S if w.eager else DHT_REANNOUNCE_S)
        for ih in [ih for ih in self._next if ih not in live]:
            del self._next[ih]
            self.results.pop(ih, None)
        self._collect()
        self.deliver(torrents, fetches, now=now)

    def _collect(self) -> None:
        for f in self.node.take_found():
            r = self.results.get(f.info_hash)
            if r is not None:
                r.peers += len(f.peers)
                r.done = r.done or f.done
            if f.peers:
                self._found.append(f)

    def take_found(self) -> list[PeersFound]:
        out, self._found = self._found, []
        return out

    def datagrams_to_send(self) -> list[tuple[bytes, Addr]]:
        return self.node.datagrams_to_send()

    def status(self, info_hash: bytes) -> dict[str, object] | None:
        """The last search for ``info_hash``: when it started, peers found, finished or not."""
        r = self.results.get(info_hash)
        if r is None:
            return None
        return {"last_search_at": r.started_at, "peers_found": r.peers, "done": r.done}

    def stats(self, now: float) -> dict[str, int]:
        return self.node.stats(now)

    def save(self) -> bytes:
        return self.node.save()
