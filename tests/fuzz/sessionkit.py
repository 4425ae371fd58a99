"""The event loop's part for the fuzz targets that drive a whole Session (``session``, ``dht``).

:class:`LoopPart` owns a :class:`~minibt.session.Session` and does what ``loop.py`` does with its actions,
without sockets or threads: hash jobs and resume saves run inline, closes come back as
``on_closed``, dials fail unless the driver takes them (:meth:`LoopPart.dial`), bootstrap host names resolve to a given address, DHT datagrams go to :meth:`LoopPart.datagram_out`.
Every session call goes through :meth:`LoopPart.call` (fuzzkit's contract: no exception escapes, no call over
the time limit) and fails the input when the session recorded a contained fault, an exception of its own.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import tempfile
from typing import Any

from fuzzkit import call, check

from minibt.actions import Close, Datagram, Dial, LookupDhtNode
from minibt.effects import HashPiece, SaveResume
from minibt.errors import CloseReason
from minibt.metainfo import Metainfo, create_torrent, parse_metainfo
from minibt.session import Session
from minibt.settings import SessionConfig
from minibt.urls import Addr
from minibt.workers import InlineHasher

MAX_ROUNDS = 50  # rounds of take_actions per step (each hash result may bring more actions)


def temp_torrent(prefix: str, name: str, payload: bytes, piece_length: int) -> tuple[Metainfo, str]:
    """A single-file torrent of ``payload`` named ``name``, and the temporary directory (removed at exit) that
    its session downloads into or seeds from; the source file is gone, so the directory starts empty."""
    d = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, d, True)
    src = os.path.join(d, name)
    with open(src, "wb") as f:
        f.write(payload)
    meta = parse_metainfo(create_torrent(src, piece_length=piece_length))
    os.unlink(src)
    return meta, d

class LoopPart:
    def __init__(self, name: str, config: SessionConfig, *, seed: int, now: float, resolve_to: Addr | None = None) -> None:
        self.name = name
        self.now = now
        self.s = Session(rng=random.Random(seed), config=config, wall_clock=lambda: 1.7e9 + self.now)
        self.resolve_to = resolve_to
        self.faults: list[str] = []  # what each contained fault was (the session logs its traceback)
        record = self.s.faults.record

        def keep(kind: Any, what: str, exc: BaseException) -> str:
            self.faults.append(f"{type(exc).__name__}: {exc}")
            return record(kind, what, exc)

        self.s.faults.record = keep  # type: ignore[method-assign]
        self.hasher = InlineHasher()

    def call(self, stage: str, fn: Any, *a: Any, **k: Any) -> Any:
        """``fn(*a, **k)`` under fuzzkit's contract, then no contained fault."""
        result, _ = call(self.name, stage, (), fn, *a, **k)
        check(self.name, stage, not self.faults, f"contained fault(s) {self.faults} (the log has the traceback)")
        return result

    def closed(self, cid: int) -> None:
        """Connection ``cid`` was closed (a driver that keeps one open marks it)."""

    def datagram_out(self, data: bytes, addr: Addr) -> None:
        """A DHT datagram the session sends."""

    def dial(self, a: Dial) -> bool:
        """True if dial ``a`` reaches a peer of the driver's (it calls ``on_connected``); else it fails."""
        return False

    def actions(self) -> int:
        """Carry out the session's actions until it has none; the most datagrams one take_actions gave."""
        most = 0
        for _ in range(MAX_ROUNDS):
            acts = self.call("take_actions", self.s.take_actions)
            if not acts:
                break
            sent = 0
            for a in acts:
                if isinstance(a, HashPiece):
                    self.hasher.submit(a.job)
                elif isinstance(a, SaveResume):
                    self.hasher.run(a.run, a)
                elif isinstance(a, Dial):
                    if not self.dial(a):
                        self.call("on_closed", self.s.on_closed, a.cid, CloseReason.CONNECT_FAILED, "fuzz: no route",
                                  now=self.now)
                elif isinstance(a, Close):
                    self.closed(a.cid)
                    self.call("on_closed", self.s.on_closed, a.cid, a.reason, a.detail, now=self.now)
                elif isinstance(a, LookupDhtNode) and self.resolve_to is not None:
                    self.call("on_dht_resolved", self.s.on_dht_resolved, [self.resolve_to], now=self.now)
                elif isinstance(a, Datagram):
                    sent += 1
                    self.datagram_out(a.data, a.addr)
            most = max(most, sent)
            for res in self.hasher.results():
                self.call("on_hash_result", self.s.on_hash_result, res, now=self.now)
        return most
