"""Peer reputation: per-IP scores, session bans and the smart-ban block ledger.

Rules (issue 3, after Net::BitTorrent's Peer documentation):
- every IP starts at 100; a verified piece it contributed to: +1 (no upper cap);
- a piece that fails its hash: -20 for the IP(s) that sent bad blocks.  When one IP sent the whole
  piece the blame is certain at once.  When several IPs shared it, the block digests are kept in a
  ledger and compared with the piece's good data once it verifies, so an honest peer that shared a
  piece with a liar is not punished (libtorrent's smart-ban idea);
- protocol abuse costs points too (the caller chooses how many);
- at 50 or below the IP is banned for the rest of the session.

Pure: no I/O; callers pass digests in.  Outputs are events (``ReputationChanged``, ``Banned``).
Memory is bounded: at most ``max_ips`` scores (least recently touched dropped first; banned IPs are
kept), ``max_bans`` bans (the oldest lifted first: a hostile swarm of many addresses, an IPv6 prefix
say, cannot grow the table; a lifted IP has to misbehave again to be banned again) and
``max_ledger_pieces`` pieces in the ledger.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

REPUTATION_START = 100  # issue 3 / Net::BitTorrent::Peer
REPUTATION_CUT = 50  # at or below: disconnect and ban for the session
PIECE_OK_POINTS = 1
PIECE_BAD_POINTS = 20
MAX_IPS = 4096  # bounded table (STYLE.md section 7)
MAX_BANS = 1024  # bounded table: about 0.3 MiB of addresses and reasons (budget.py SESSION_TABLES_BYTES)
MAX_LEDGER_PIECES = 64
MAX_LEDGER_ATTEMPTS = 8  # failed attempts remembered per piece
# Block records in the whole ledger (oldest pieces dropped beyond): 64 pieces x 8 attempts of a 4 MiB piece
# would be 131,072 records (~20 MiB); this is ~0.6 MiB (budget.py SESSION_TABLES_BYTES).  Convention.
MAX_LEDGER_RECORDS = 4096


@dataclass(frozen=True, slots=True)
class ReputationChanged:
    """An IP's reputation score changed."""

    ip: str
    old: int
    new: int
    reason: str


@dataclass(frozen=True, slots=True)
class Banned:
    """An IP was banned for the rest of the session."""

    ip: str
    reason: str


RepEvent = ReputationChanged | Banned


@dataclass(frozen=True, slots=True)
class BlockRecord:
    """Who sent one block of a piece, and the SHA-1 of what they sent."""

    block: int
    ip: str
    digest: bytes


class Reputation:
    """Scores and bans for one session."""

    def __init__(
        self,
        *,
        start: int = REPUTATION_START,
        cut: int = REPUTATION_CUT,
        max_ips: int = MAX_IPS,
        max_ledger_pieces: int = MAX_LEDGER_PIECES,
        max_bans: int = MAX_BANS,
    ) -> None:
        self.start = start
        self.cut = cut
        self._max_ips = max_ips
        self._max_ledger = max_ledger_pieces
        if max_bans < 1:
            raise ValueError("max_bans must be >= 1")
        self._max_bans = max_bans
        self._scores: OrderedDict[str, int] = OrderedDict()
        self._banned: dict[str, str] = {}  # in the order banned (the oldest is lifted first)
        # (torrent key, piece) -> one list of block records per failed attempt
        self._ledger: OrderedDict[tuple[bytes, int], list[list[BlockRecord]]] = OrderedDict()
        self._ledger_records = 0
        self.counters = {"pieces_blamed": 0, "honest_spared": 0, "bans": 0, "bans_lifted": 0}

    # ------------------------------------------------------------------ scores and bans

    def score(self, ip: str) -> int:
        return self._scores.get(ip, self.start)

    def is_banned(self, ip: str) -> bool:
        return ip in self._banned

    def banned(self) -> dict[str, str]:
        """Banned IPs and why."""
        return dict(self._banned)

    def adjust(self, ip: str, delta: int, reason: str, *, changed: bool = True) -> list[RepEvent]:
        """Add ``delta`` to ``ip``'s score; ban it when the score reaches the cut.  ``changed``: return the
        ReputationChanged event too (the Banned one comes back either way)."""
        old = self.score(ip)
        new = old + delta
        self._scores[ip] = new
        self._scores.move_to_end(ip)
        while len(self._scores) > self._max_ips:
            victim = next(iter(self._scores))
            self._scores.pop(victim)
        events: list[RepEvent] = [ReputationChanged(ip, old, new, reason)] if changed else []
        if new <= self.cut and ip not in self._banned:
            events.extend(self.ban(ip, f"reputation {new}: {reason}"))
        return events

    def ban(self, ip: str, reason: str) -> list[RepEvent]:
        if ip in self._banned:
            return []
        while len(self._banned) >= self._max_bans:  # the table is full: the oldest ban is lifted
            oldest = next(iter(self._banned))
            del self._banned[oldest]
            self._scores.pop(oldest, None)
            self.counters["bans_lifted"] += 1
        self._banned[ip] = reason
        self.counters["bans"] += 1
        return [Banned(ip, reason)]

    def unban(self, ip: str) -> None:
        self._banned.pop(ip, None)
        self._scores.pop(ip, None)

    # ------------------------------------------------------------------ pieces

    def piece_failed(self, key: bytes, piece: int, blocks: Sequence[BlockRecord]) -> list[RepEvent]:
        """A piece failed its hash.  ``blocks`` says who sent each block and its digest."""
        ips = {b.ip for b in blocks}
        if not ips:
            return []
        if len(ips) == 1:
            self.counters["pieces_blamed"] += 1
            return self.adjust(next(iter(ips)), -PIECE_BAD_POINTS, f"sent corrupt data (piece {piece})")
        if len(blocks) > MAX_LEDGER_RECORDS:
            return []  # a piece of more than 4096 blocks (64 MiB): nobody is blamed for it
        entry = self._ledger.get((key, piece))
        if entry is None:
            entry = self._ledger[(key, piece)] = []
        self._ledger.move_to_end((key, piece))
        if len(entry) < MAX_LEDGER_ATTEMPTS:
            entry.append(list(blocks))
            self._ledger_records += len(blocks)
        while len(self._ledger) > self._max_ledger or self._ledger_records > MAX_LEDGER_RECORDS:
            self._drop_ledger(next(iter(self._ledger)))
        return []

    def _drop_ledger(self, k: tuple[bytes, int]) -> list[list[BlockRecord]] | None:
        entry = self._ledger.pop(k, None)
        if entry is not None:
            self._ledger_records -= sum(len(a) for a in entry)
        return entry

    def ledger_records(self) -> int:
        """Block records held by the smart-ban ledger (at most MAX_LEDGER_RECORDS)."""
        return self._ledger_records

    def has_ledger(self, key: bytes, piece: int) -> bool:
        return (key, piece) in self._ledger

    def piece_passed(
        self, key: bytes, piece: int, contributors: Iterable[str], good_digests: Sequence[bytes] | None = None,
        *, changed: bool = True,
    ) -> list[RepEvent]:
        """A piece verified: +1 to each contributor; settle any ledger of earlier failures.

        ``good_digests[i]`` is the SHA-1 of block ``i`` of the good piece; it is needed only when
        :meth:`has_ledger` is true.  ``changed=False``: no ReputationChanged events for the +1s (nothing
        listens; a download verifies 4,096 pieces a GiB), only what a settled ledger brings.
        """
        events: list[RepEvent] = []
        liars: set[str] = set()
        entry = self._drop_ledger((key, piece))
        if entry is not None and good_digests is not None:
            honest: set[str] = set()
            for attempt in entry:
                # -20 per failed attempt for each IP whose block differs from the good data.
                bad = {r.ip for r in attempt if r.block < len(good_digests) and r.digest != good_digests[r.block]}
                honest |= {r.ip for r in attempt} - bad
                liars |= bad
                for ip in sorted(bad):
                    self.counters["pieces_blamed"] += 1
                    events.extend(self.adjust(ip, -PIECE_BAD_POINTS, f"sent corrupt data (blocks of piece {piece})"))
            self.counters["honest_spared"] += len(honest - liars)
        for ip in sorted(set(contributors) - liars):
            events.extend(self.adjust(ip, PIECE_OK_POINTS, f"piece {piece} verified" if changed else "", changed=changed))
        return events

    def forget_torrent(self, key: bytes) -> None:
        for k in [k for k in self._ledger if k[0] == key]:
            self._drop_ledger(k)
