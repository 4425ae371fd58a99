"""Public API plumbing: event queue, listeners, dispatcher, picker support for user requests, README tables.

Scenarios with real sessions (user-driven choking/requesting, the Peer facade) are in
tests/sim/test_peer_api_sim.py; real sockets in tests/integration/test_peer_api.py.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import pytest

import minibt
from minibt.errors import CloseReason
from minibt.events import (
    CLOSE_REASON_DOCS,
    EVENT_DOCS,
    Event,
    EventName,
    EventQueue,
    Listeners,
    close_reason_table,
    event_table,
)
from minibt.handles import Dispatcher, Peer
from minibt.handshake import Handshake
from minibt.peer import PeerConnection, PeerSource
from minibt.picker import Block, PiecePicker
from minibt.session import Session
from minibt.wire_codec import BLOCK_LEN

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def rec(name: EventName = EventName.HAVE, index: int | None = None) -> Event[Any, Any]:
    return Event(name, None, None, index=index)


# ---------------------------------------------------------------------- queue and listeners


def test_queue_is_a_no_op_until_enabled() -> None:
    q = EventQueue()
    q.push(rec())
    assert len(q) == 0 and q.take() == []


def test_queue_is_bounded_and_keeps_the_newest() -> None:
    q = EventQueue(max_events=3, enabled=True)
    for i in range(5):
        q.push(rec(index=i))
    assert [r.index for r in q.take()] == [2, 3, 4]
    assert q.dropped == 2 and len(q) == 0
    with pytest.raises(ValueError):
        EventQueue(max_events=0)


def test_events_are_built_only_while_a_delivered_queue_has_callbacks() -> None:
    """A Client with no callback (the CLI, the runner) queues nothing; registering the first callback
    anywhere (client, torrent or peer Listeners) turns the queue on, removing the last turns it off."""
    q = EventQueue()
    client, peer = Listeners(q), Listeners(q)

    def cb(ev: object) -> None:
        pass

    client.on("have", cb)
    q.push(rec())
    assert not q.enabled and len(q) == 0  # no Dispatcher delivers it
    q.attach()
    assert q.enabled
    q.push(rec(index=1))
    peer.on("piece_verified", cb)
    client.off("have", cb)
    client.off("have", cb)  # absent: counts nothing
    assert q.enabled
    q.push(rec(index=2))
    peer.off("piece_verified", cb)
    assert not q.enabled
    q.push(rec(index=3))
    assert [r.index for r in q.take()] == [1, 2]


def test_listeners_validate_names_and_callbacks() -> None:
    ls = Listeners()
    calls: list[str] = []

    def a(ev: object) -> None:
        calls.append("a")

    assert not ls
    ls.on("have", a)
    ls.on(EventName.HAVE, a)
    assert ls and ls.get(EventName.HAVE) == (a, a)
    ls.off("have", a)
    assert ls.get(EventName.HAVE) == (a,)
    ls.off("have", a)
    ls.off("have", a)  # absent: no error
    assert ls.get(EventName.HAVE) == () and not ls
    with pytest.raises(ValueError, match="unknown event 'hav'"):
        ls.on("hav", a)
    with pytest.raises(TypeError):
        ls.on("have", "not callable")  # type: ignore[arg-type]


def make_session() -> Session:
    return Session(rng=random.Random(5))


def test_dispatcher_isolates_failing_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    s = make_session()
    d = Dispatcher(s)
    assert not s.events.enabled  # no callback yet: no event is built
    seen: list[tuple[str, int | None]] = []

    def bad(ev: Event) -> None:
        raise KeyError("boom")

    d.listeners.on("have", bad)
    d.listeners.on("have", lambda ev: seen.append((ev.name.value, ev.index)))
    d.listeners.on("piece_verified", lambda ev: seen.append((ev.name.value, ev.index)))
    s.events.push(rec(EventName.HAVE, 1))
    s.events.push(rec(EventName.PIECE_VERIFIED, 2))
    s.events.push(rec(EventName.BITFIELD))
    with caplog.at_level(logging.ERROR, logger="minibt.handles"):
        assert d.dispatch() == 3
    assert seen == [("have", 1), ("piece_verified", 2)]
    assert d.counters == {"events": 3, "callbacks": 3, "callback_errors": 1}
    assert "boom" in caplog.text
    assert d.dispatch() == 0


def test_dispatcher_delivers_events_queued_by_callbacks() -> None:
    s = make_session()
    d = Dispatcher(s)
    order: list[int | None] = []

    def chain(ev: Event) -> None:
        order.append(ev.index)
        if ev.index is not None and ev.index < 3:
            s.events.push(rec(EventName.HAVE, ev.index + 1))

    d.listeners.on("have", chain)
    s.events.push(rec(EventName.HAVE, 0))
    assert d.dispatch() == 4
    assert order == [0, 1, 2, 3]


def test_refused_connection_reported_as_disconnect_with_facade() -> None:
    s = make_session()
    d = Dispatcher(s)
    got: list[Event] = []
    d.listeners.on("peer_disconnected", got.append)
    s.ban("192.0.2.7", "test ban")
    assert s.on_incoming(("192.0.2.7", 5000), now=1.0) is None
    d.dispatch()
    (ev,) = [e for e in got if e.peer is not None and e.peer.ip == "192.0.2.7"]
    assert ev.reason is CloseReason.BANNED and ev.detail == "test ban" and ev.torrent is None
    assert ev.peer is not None and ev.peer.incoming and not ev.peer.connected
    assert ev.peer.close_reason is CloseReason.BANNED and ev.peer.source is PeerSource.INCOMING
    assert not s.conns


def test_peer_facade_is_cached_per_connection() -> None:
    s = make_session()
    hs = Handshake(peer_id=bytes(20), reserved=bytes(8), info_hash=None, now=0.0)
    conn = PeerConnection(9, ("198.51.100.1", 6881), outgoing=True, source=PeerSource.TRACKER, handshake=hs, now=0.0)
    p = Peer.of(conn, s)
    assert Peer.of(conn, s) is p
    # Before the handshake: BEP 3 initial state, nothing known yet.
    assert p.am_choking and p.peer_choking and not p.am_interested and not p.peer_interested
    assert p.peer_id is None and p.client == "" and p.torrent is None and p.bitfield == b""
    assert p.bitfield_status == "none" and p.blocks_inflight == 0 and p.flags == minibt.PeerFlags.NONE
    assert p.source is PeerSource.TRACKER and not p.incoming and not p.connected


# ---------------------------------------------------------------------- picker support


def picker(n: int = 4, piece_length: int = 2 * BLOCK_LEN, last: int = BLOCK_LEN + 100) -> PiecePicker:
    return PiecePicker(n, piece_length, piece_length * (n - 1) + last, random.Random(1))


def test_mark_requested_then_received_like_a_picked_block() -> None:
    pk = picker()
    pk.peer_bitfield("a", bytes([0b1010_0000]))
    b = Block(2, BLOCK_LEN, BLOCK_LEN)
    pk.mark_requested("a", b)
    assert pk.is_requested("a", b) and pk.num_outstanding("a") == 1 and pk.outstanding("a") == [b]
    # pick() never hands the same block out again outside end game
    picked = pk.pick("a", 10)
    assert b not in picked
    assert pk.block_received("a", b) == (True, [])
    assert pk.num_outstanding("a") == len(picked)


def test_mark_requested_refuses_what_cannot_be_asked() -> None:
    pk = picker()
    pk.peer_bitfield("a", bytes([0b1011_0000]))
    pk.set_have(0)
    last = pk.num_pieces - 1
    for bad in (
        Block(0, 0, BLOCK_LEN),  # we have it
        Block(1, 0, BLOCK_LEN),  # the peer lacks it
        Block(2, 1, BLOCK_LEN),  # unaligned
        Block(2, 0, 100),  # short block inside a piece
        Block(last, BLOCK_LEN, BLOCK_LEN),  # beyond the short last piece
        Block(9, 0, BLOCK_LEN),  # no such piece
    ):
        with pytest.raises(ValueError):
            pk.mark_requested("a", bad)
    with pytest.raises(ValueError):
        pk.mark_requested("nobody", Block(2, 0, BLOCK_LEN))
    pk.mark_requested("a", Block(last, BLOCK_LEN, 100))  # the short tail block is fine
    pk.mark_requested("a", Block(2, 0, BLOCK_LEN))
    with pytest.raises(ValueError, match="already requested"):
        pk.mark_requested("a", Block(2, 0, BLOCK_LEN))
    pk.peer_have_all("b")
    pk.mark_requested("b", Block(2, 0, BLOCK_LEN))  # a second requester, as in end game
    assert pk.block_received("b", Block(2, 0, BLOCK_LEN)) == (True, ["a"])
    with pytest.raises(ValueError, match="already received"):
        pk.mark_requested("b", Block(2, 0, BLOCK_LEN))
    pk.piece_hashing(3)
    with pytest.raises(ValueError, match="hashed"):
        pk.mark_requested("a", Block(3, 0, BLOCK_LEN))


def test_peer_pieces_is_the_bep3_bitfield() -> None:
    pk = picker(n=11, piece_length=BLOCK_LEN, last=BLOCK_LEN)
    assert pk.peer_pieces("x") == bytes(2)
    bits = bytes([0b1000_0001, 0b0110_0000])
    pk.peer_bitfield("x", bits)
    assert pk.peer_pieces("x") == bits
    pk.peer_have("x", 10)
    assert pk.peer_pieces("x") == bytes([0b1000_0001, 0b0110_0000 | 0b0010_0000])
    pk.peer_have_all("y")
    assert pk.peer_pieces("y") == bytes([0xFF, 0b1110_0000])
    pk.peer_have_none("z")
    assert pk.peer_pieces("z") == bytes(2)


# ---------------------------------------------------------------------- README and exports


def readme_table(header: str) -> str:
    text = README.read_text()
    start = text.index(header)
    lines = []
    for line in text[start:].splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    return "\n".join(lines)


def test_readme_disconnect_reasons_table_matches_the_enum() -> None:
    assert set(CLOSE_REASON_DOCS) == set(CloseReason), "document every CloseReason in minibt/events.py"
    table = readme_table("| value | name | meaning |")
    assert table == close_reason_table(), (
        "README.md is stale: paste minibt.events.close_reason_table() into the 'Disconnect reasons' table"
    )
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", table, re.M)
    assert [(int(v), n) for v, n in rows] == [(r.value, r.name) for r in CloseReason]


def test_readme_events_table_matches_the_enum() -> None:
    assert set(EVENT_DOCS) == set(EventName)
    assert readme_table("| event | fields | when |") == event_table()


def test_readme_shows_the_example_script_verbatim() -> None:
    script = (ROOT / "tools" / "api_example.py").read_text()
    assert f"```python\n{script.rstrip()}\n```" in README.read_text()


def test_package_exports_the_public_api() -> None:
    for name in ("Client", "Peer", "PeerFlags", "Event", "EventName", "CloseReason", "PeerSource",
                 "TorrentConfig", "SessionConfig", "Torrent", "TorrentState"):
        assert name in minibt.__all__ and hasattr(minibt, name)
    assert minibt.EventName.PIECE_VERIFIED == "piece_verified"
