"""Choking (BEP 3 "choking and optimistic unchoking") and the BEP 6 allowed-fast set.

Pure: the session hands :meth:`Choker.rechoke` a snapshot of its peers and ``now``, and gets back
the set of peer keys that should be unchoked.  Every ``rechoke_interval_s`` the best
``regular_slots`` interested, not-snubbed peers by rate get regular slots, plus one optimistic
unchoke chosen at random (new peers 3x as likely) that is kept for ``optimistic_interval_s``.

Not done: BEP 3's rule of also unchoking *uninterested* peers that beat the worst downloader.
An uninterested peer can't use an unchoke, and the session runs an early (unscheduled) rechoke
as soon as a peer becomes interested, which gives it a slot by rate just the same.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from .sha1 import sha1

REGULAR_SLOTS = 4  # BEP 3 / mainline: "unchoke the four peers which have the best upload rate"
RECHOKE_INTERVAL_S = 10.0  # BEP 3: "reciprocation ... every ten seconds"
OPTIMISTIC_INTERVAL_S = 30.0  # BEP 3: the optimistic unchoke "rotates every 30 seconds"
NEW_PEER_WINDOW_S = 60.0  # convention (mainline Choker.py): who counts as a "new" connection
NEW_PEER_WEIGHT = 3  # BEP 3 / mainline: new connections are "three times as likely" to be picked
ALLOWED_FAST_K = 10  # BEP 6 suggests 10 (libtorrent's allowed_fast_set_size default is 5)
ALLOWED_FAST_V4_MASK = 0xFFFFFF00  # BEP 6: "x = 0xFFFFFF00 & ip"


@dataclass(frozen=True, slots=True)
class PeerSnapshot:
    """What the choker needs to know about one connected peer.

    ``rate`` is bytes/s the peer gave us while we leech, or bytes/s we sent it while we seed.
    """

    key: Hashable
    interested: bool
    rate: float
    snubbed: bool
    connected_at: float
    unchoked: bool


class Choker:
    """Decides who is unchoked.  Deterministic for a seeded ``rng`` and the same inputs."""

    def __init__(
        self,
        rng: random.Random,
        *,
        regular_slots: int = REGULAR_SLOTS,
        rechoke_interval_s: float = RECHOKE_INTERVAL_S,
        optimistic_interval_s: float = OPTIMISTIC_INTERVAL_S,
        new_peer_window_s: float = NEW_PEER_WINDOW_S,
    ) -> None:
        self._rng = rng
        self._slots = regular_slots
        self._interval = rechoke_interval_s
        self._opt_interval = optimistic_interval_s
        self._new_window = new_peer_window_s
        self._next_at: float | None = None  # None: never run, due at once
        self._optimistic: Hashable | None = None
        self._opt_until = 0.0
        self._rechokes = 0
        self._rotations = 0

    @property
    def optimistic(self) -> Hashable | None:
        """Key of the current optimistic unchoke, or None."""
        return self._optimistic

    def next_deadline(self) -> float | None:
        """When the next scheduled rechoke is due (None before the first rechoke)."""
        return self._next_at

    def due(self, now: float) -> bool:
        return self._next_at is None or now >= self._next_at

    def rechoke(self, peers: Sequence[PeerSnapshot], *, now: float, scheduled: bool = True) -> set[Hashable]:
        """The set of peer keys to have unchoked from now on.

        A scheduled run (or the very first run) sets the next deadline to ``now + interval``;
        an early run (a peer became interested or left) leaves the schedule alone.
        """
        self._rechokes += 1
        if scheduled or self._next_at is None:
            self._next_at = now + self._interval
        rng = self._rng
        # Ties in rate are broken at random: one draw per candidate, in input order.
        ranked = sorted(
            ((-p.rate, rng.random(), p.key) for p in peers if p.interested and not p.snubbed),
            key=lambda t: (t[0], t[1]),
        )
        regular = {key for _, _, key in ranked[: max(self._slots, 0)]}

        current = self._optimistic
        keep = (
            current is not None
            and now < self._opt_until
            and current not in regular
            and any(p.key == current and p.interested for p in peers)
        )
        if not keep:
            pool = [p for p in peers if p.interested and p.key not in regular]
            if len(pool) > 1 and current is not None:
                # rotate: give someone else the slot when there is anyone else
                pool = [p for p in pool if p.key != current]
            if pool:
                weights = [NEW_PEER_WEIGHT if now - p.connected_at < self._new_window else 1 for p in pool]
                self._optimistic = rng.choices(pool, weights=weights, k=1)[0].key
                self._opt_until = now + self._opt_interval
                self._rotations += 1
            else:
                self._optimistic = None
        unchoke = set(regular)
        if self._optimistic is not None:
            unchoke.add(self._optimistic)
        return unchoke

    def stats(self) -> dict[str, int]:
        return {"rechokes": self._rechokes, "optimistic_rotations": self._rotations}


def allowed_fast_set(ip: str, info_hash: bytes, num_pieces: int, k: int = ALLOWED_FAST_K) -> list[int]:
    """BEP 6 canonical allowed-fast set for a peer at ``ip`` (IPv4 only; IPv6 gives ``[]``).

    Raises ValueError if ``ip`` is not an IP address.
    """
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is None:
            return []
        addr = addr.ipv4_mapped
    k = min(k, num_pieces)
    if k <= 0:
        return []
    x = (int(addr) & ALLOWED_FAST_V4_MASK).to_bytes(4, "big") + info_hash
    out: list[int] = []
    seen: set[int] = set()
    while len(out) < k:
        x = sha1(x).digest()
        for j in range(0, 20, 4):
            if len(out) >= k:
                break
            index = int.from_bytes(x[j : j + 4], "big") % num_pieces
            if index not in seen:
                seen.add(index)
                out.append(index)
    return out
