"""BEP 9 ut_metadata codec, fetcher and server (minibt/metadata.py)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt import bencode
from minibt.errors import CloseReason, LocalProtocolError, MetadataError
from minibt.metadata import (
    DEFAULT_MAX_METADATA_BYTES,
    METADATA_PIECE_LEN,
    METADATA_REJECT_BACKOFF_S,
    METADATA_REQUEST_TIMEOUT_S,
    METADATA_SERVE_FACTOR,
    MSG_DATA,
    MSG_REJECT,
    MSG_REQUEST,
    MetadataComplete,
    MetadataEvent,
    MetadataFailed,
    MetadataFetcher,
    MetadataMsg,
    MetadataServer,
    decode_metadata_msg,
    encode_metadata_msg,
    metadata_piece_len,
    num_metadata_pieces,
)

# ------------------------------------------------------------------------------------------- codec


def test_bep9_request_vector() -> None:
    assert encode_metadata_msg(MSG_REQUEST, 0) == b"d8:msg_typei0e5:piecei0ee"
    assert decode_metadata_msg(b"d8:msg_typei0e5:piecei0ee") == (MetadataMsg(0, 0, None), b"")


def test_bep9_data_vector() -> None:
    payload = b"d8:msg_typei1e5:piecei0e10:total_sizei34256eexxxxxxxx"
    assert decode_metadata_msg(payload) == (MetadataMsg(1, 0, 34256), b"xxxxxxxx")
    assert encode_metadata_msg(MSG_DATA, 0, 34256, b"xxxxxxxx") == payload


def test_bep9_reject_vector() -> None:
    # (the BEP text's reject example carries a typo, msg_type 1; a reject is msg_type 2)
    assert encode_metadata_msg(MSG_REJECT, 0) == b"d8:msg_typei2e5:piecei0ee"
    assert decode_metadata_msg(b"d8:msg_typei2e5:piecei0ee") == (MetadataMsg(2, 0, None), b"")


def test_unknown_msg_type_is_returned_for_the_caller_to_ignore() -> None:
    assert decode_metadata_msg(b"d8:msg_typei7e1:xi3ee")[0] == MetadataMsg(7, None, None)
    assert decode_metadata_msg(b"d8:msg_typei9e5:piecei4ee")[0] == MetadataMsg(9, 4, None)


def test_encode_refuses_illegal_combinations() -> None:
    for args in ((MSG_DATA, 0), (MSG_REQUEST, 0, 5), (MSG_REJECT, 0, None, b"x"), (-1, 0), (0, -1)):
        with pytest.raises(LocalProtocolError):
            encode_metadata_msg(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"x",
        b"le",
        b"i1e",
        b"d5:piecei0ee",  # no msg_type
        b"d8:msg_type1:0e",  # msg_type not an int
        b"d8:msg_typei-1e5:piecei0ee",
        b"d8:msg_typei0ee",  # request without piece
        b"d8:msg_typei0e5:piecei-1ee",
        b"d8:msg_typei1e5:piecei0ee",  # data without total_size
        b"d8:msg_typei1e5:piecei0e10:total_sizei0ee",
        b"d8:msg_typei0e5:piecei0e",  # truncated
        b"d8:msg_typei0e5:piece",
        b"d8:msg_typei0e5:piecei01ee",  # not strict bencode
        b"d5:piecei0e8:msg_typei0ee",  # unsorted keys
        b"d99999999999:",
        b"d" * 10 + b"e" * 10,
        b"d1:a" + b"1" * 2000 + b"e",  # dict longer than the cap
    ],
)
def test_malformed_messages_raise_metadata_error(payload: bytes) -> None:
    with pytest.raises(MetadataError):
        decode_metadata_msg(payload)


def test_oversize_message() -> None:
    with pytest.raises(MetadataError) as ei:
        decode_metadata_msg(encode_metadata_msg(MSG_DATA, 0, 99999, bytes(METADATA_PIECE_LEN + 2000)))
    assert ei.value.reason is CloseReason.MESSAGE_TOO_LARGE


@given(
    st.sampled_from([MSG_REQUEST, MSG_DATA, MSG_REJECT, 5]),
    st.integers(0, 10_000),
    st.integers(1, 30 << 20),
    st.binary(max_size=64),
)
@settings(max_examples=150, deadline=None)
def test_round_trip(msg_type: int, piece: int, total: int, data: bytes) -> None:
    if msg_type == MSG_DATA:
        payload = encode_metadata_msg(msg_type, piece, total, data)
        assert decode_metadata_msg(payload) == (MetadataMsg(msg_type, piece, total), data)
    else:
        payload = encode_metadata_msg(msg_type, piece)
        assert decode_metadata_msg(payload) == (MetadataMsg(msg_type, piece, None), b"")
    assert decode_metadata_msg(memoryview(payload)) == decode_metadata_msg(payload)


@given(st.binary(max_size=200))
@settings(max_examples=400, deadline=None)
def test_garbage_only_raises_metadata_error(data: bytes) -> None:
    for payload in (data, b"d8:msg_type" + data, b"d8:msg_typei1e5:piece" + data):
        try:
            decode_metadata_msg(payload)
        except MetadataError:
            pass


def test_piece_arithmetic() -> None:
    assert num_metadata_pieces(1) == 1
    assert num_metadata_pieces(METADATA_PIECE_LEN) == 1
    assert num_metadata_pieces(METADATA_PIECE_LEN + 1) == 2
    assert metadata_piece_len(METADATA_PIECE_LEN + 5, 0) == METADATA_PIECE_LEN
    assert metadata_piece_len(METADATA_PIECE_LEN + 5, 1) == 5


# ------------------------------------------------------------------------------------------- fetcher


def make_info(rng: random.Random, pieces: int = 3) -> bytes:
    n = (pieces - 1) * METADATA_PIECE_LEN // 20 + 10
    return bencode.encode({b"length": 123, b"name": b"x", b"piece length": 16384, b"pieces": rng.randbytes(20 * n)})


def corrupt(info: bytes, piece: int) -> bytes:
    b = bytearray(info)
    b[piece * METADATA_PIECE_LEN + 7] ^= 0xFF
    return bytes(b)


class FakePeer:
    """Answers ut_metadata requests like a remote client would (through the real codec)."""

    def __init__(self, info: bytes | None, *, silent: bool = False) -> None:
        self.server = MetadataServer(info)
        self.silent = silent
        self.requests: list[int] = []

    def answer(self, key: Hashable, piece: int, now: float) -> bytes | None:
        self.requests.append(piece)
        if self.silent:
            return None
        return self.server.on_request(key, piece, now=now)


def deliver(f: MetadataFetcher, key: Hashable, payload: bytes, now: float) -> list[MetadataEvent]:
    msg, data = decode_metadata_msg(payload)
    assert msg.piece is not None
    if msg.msg_type == MSG_DATA:
        assert msg.total_size is not None
        return f.on_data(key, msg.piece, msg.total_size, data, now=now)
    if msg.msg_type == MSG_REJECT:
        f.on_reject(key, msg.piece, now=now)
    return []


def run(f: MetadataFetcher, peers: dict[str, FakePeer], clock: FakeClock, max_rounds: int = 200) -> list[MetadataEvent]:
    events: list[MetadataEvent] = []
    for _ in range(max_rounds):
        progressed = False
        for key, peer in peers.items():
            for piece in f.next_requests(key, now=clock.now()):
                progressed = True
                payload = peer.answer(key, piece, clock.now())
                if payload is not None:
                    events += deliver(f, key, payload, clock.now())
        if f.done:
            return events
        if not progressed:
            deadline = f.next_deadline()
            if deadline is None:
                return events
            clock.jump_to(max(clock.now(), deadline))
            events += f.handle_timeout(now=clock.now())
    return events


def fetcher_with(info: bytes, peers: dict[str, FakePeer], **kw: object) -> MetadataFetcher:
    f = MetadataFetcher(hashlib.sha1(info).digest(), **kw)  # type: ignore[arg-type]
    for i, (key, p) in enumerate(peers.items()):
        size = p.server.metadata_size
        assert f.add_peer(key, ut_metadata=3 + i, metadata_size=size if size is not None else len(info))
    return f


def test_fetch_from_one_honest_peer(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng)
    peers = {"a": FakePeer(info)}
    f = fetcher_with(info, peers)
    assert f.ext_id("a") == 3
    events = run(f, peers, clock)
    assert events == [MetadataComplete(info)]
    assert f.done and f.info_bytes == info and f.next_deadline() is None
    assert f.next_requests("a", now=clock.now()) == []


def test_requests_are_spread_over_peers(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=3)
    f = fetcher_with(info, {k: FakePeer(info) for k in "abc"})
    got = [f.next_requests(k, now=clock.now()) for k in "abc"]
    assert sorted(p for g in got for p in g) == [0, 1, 2]
    assert all(len(g) == 1 for g in got)


def test_full_fetch_from_three_peers_with_one_corrupt(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=3)
    peers = {"liar": FakePeer(corrupt(info, 0)), "b": FakePeer(info), "c": FakePeer(info)}
    f = fetcher_with(info, peers)
    events = run(f, peers, clock)
    assert events[-1] == MetadataComplete(info)
    failures = [e for e in events if isinstance(e, MetadataFailed)]
    # first a shared bad copy (everyone blamed, nobody excluded), then a single-source copy
    # from the liar, which gets it excluded
    assert failures[0] == MetadataFailed(frozenset({"liar", "b", "c"}), None)
    assert failures[-1] == MetadataFailed(frozenset({"liar"}), "liar")
    assert len(failures) == 2
    assert f.next_requests("liar", now=clock.now()) == []
    assert f.stats()["failures"] == 2


@pytest.mark.parametrize("order", [("b", "liar", "c"), ("b", "c", "liar"), ("liar", "b", "c")])
def test_corrupt_peer_never_prevents_completion(order: tuple[str, ...], clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    all_peers = {"liar": FakePeer(corrupt(info, 1)), "b": FakePeer(info), "c": FakePeer(info)}
    peers = {k: all_peers[k] for k in order}
    f = fetcher_with(info, peers)
    events = run(f, peers, clock)
    assert events[-1] == MetadataComplete(info)
    assert all("liar" in e.suppliers for e in events if isinstance(e, MetadataFailed))


def test_lone_liar_is_excluded_at_once(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    peers = {"liar": FakePeer(corrupt(info, 1))}
    f = fetcher_with(info, peers)
    events = run(f, peers, clock)
    assert events == [MetadataFailed(frozenset({"liar"}), "liar")]
    assert not f.done and f.askable_peers(now=clock.now()) == []
    # a repeated handshake does not lift the exclusion
    assert not f.add_peer("liar", ut_metadata=3, metadata_size=len(info))
    peers["honest"] = FakePeer(info)
    assert f.add_peer("honest", ut_metadata=4, metadata_size=len(info))
    assert run(f, peers, clock)[-1] == MetadataComplete(info)


def test_reject_moves_piece_elsewhere_and_rests_the_peer(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    peers = {"empty": FakePeer(None), "b": FakePeer(info)}
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("empty", ut_metadata=1, metadata_size=len(info))  # claims metadata it lacks
    f.add_peer("b", ut_metadata=1, metadata_size=len(info))
    events = run(f, peers, clock)
    assert events == [MetadataComplete(info)]
    assert f.stats()["rejects"] >= 1
    # after a reject the peer was not asked again within the back-off
    assert len(peers["empty"].requests) == 1


def test_rejecting_peer_is_asked_again_after_the_backoff(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=1)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("a", ut_metadata=1, metadata_size=len(info))
    assert f.next_requests("a", now=clock.now()) == [0]
    f.on_reject("a", 0, now=clock.now())
    assert f.next_requests("a", now=clock.now() + METADATA_REJECT_BACKOFF_S - 1) == []
    assert f.next_deadline() == pytest.approx(clock.now() + METADATA_REJECT_BACKOFF_S)
    clock.advance(METADATA_REJECT_BACKOFF_S)
    f.handle_timeout(now=clock.now())
    assert f.next_deadline() is None  # nothing in flight, nobody resting
    assert f.next_requests("a", now=clock.now()) == [0]


def test_timeout_re_requests_elsewhere(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    peers = {"slow": FakePeer(info, silent=True), "b": FakePeer(info)}
    f = fetcher_with(info, peers)
    assert f.next_requests("slow", now=clock.now()) == [0]
    assert f.next_deadline() == pytest.approx(clock.now() + METADATA_REQUEST_TIMEOUT_S)
    events = run(f, peers, clock)
    assert events == [MetadataComplete(info)]
    assert f.stats()["timeouts"] >= 1
    assert peers["b"].requests.count(0) == 1


def test_late_answer_after_timeout_is_still_used(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=1)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("a", ut_metadata=1, metadata_size=len(info))
    assert f.next_requests("a", now=clock.now()) == [0]
    clock.advance(METADATA_REQUEST_TIMEOUT_S)
    f.handle_timeout(now=clock.now())
    assert f.on_data("a", 0, len(info), info, now=clock.now()) == [MetadataComplete(info)]


def test_disconnect_frees_requests(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("a", ut_metadata=1, metadata_size=len(info))
    f.add_peer("b", ut_metadata=1, metadata_size=len(info))
    assert f.next_requests("a", now=clock.now()) == [0]
    assert f.next_requests("b", now=clock.now()) == [1]
    f.remove_peer("a")
    assert f.next_requests("b", now=clock.now()) == [0]
    assert f.ext_id("a") is None


def test_inconsistent_sizes_majority_wins(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("odd", ut_metadata=1, metadata_size=len(info) + 100)
    f.add_peer("b", ut_metadata=1, metadata_size=len(info))
    f.add_peer("c", ut_metadata=1, metadata_size=len(info))
    assert f.next_requests("odd", now=clock.now()) == []
    assert f.size == len(info)
    # the odd peer's own data must agree with its handshake ...
    with pytest.raises(MetadataError):
        f.on_data("odd", 0, len(info), info[:METADATA_PIECE_LEN], now=clock.now())
    # ... and data consistent with its handshake is still not mixed into this attempt
    assert f.on_data("odd", 0, len(info) + 100, info[:METADATA_PIECE_LEN], now=clock.now()) == []
    assert f.stats()["have_pieces"] == 0


def test_size_vote_repeats_when_its_peers_are_gone(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=1)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("big", ut_metadata=1, metadata_size=len(info) + 1)
    assert f.next_requests("big", now=clock.now()) == [0]
    f.add_peer("b", ut_metadata=1, metadata_size=len(info))
    assert f.next_requests("b", now=clock.now()) == []
    f.remove_peer("big")
    assert f.next_requests("b", now=clock.now()) == [0]
    assert f.on_data("b", 0, len(info), info, now=clock.now()) == [MetadataComplete(info)]


def test_wrong_piece_length_or_index_is_a_protocol_error(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    f.add_peer("a", ut_metadata=1, metadata_size=len(info))
    f.next_requests("a", now=clock.now())
    with pytest.raises(MetadataError):
        f.on_data("a", 0, len(info), info[:100], now=clock.now())
    with pytest.raises(MetadataError):
        f.on_data("a", 1, len(info), info[METADATA_PIECE_LEN:] + b"x", now=clock.now())
    with pytest.raises(MetadataError):
        f.on_data("a", 2, len(info), b"", now=clock.now())


def test_size_cap_and_unusable_peers() -> None:
    ih = bytes(20)
    f = MetadataFetcher(ih)
    assert not f.add_peer("big", ut_metadata=1, metadata_size=DEFAULT_MAX_METADATA_BYTES + 1)
    assert f.add_peer("max", ut_metadata=1, metadata_size=DEFAULT_MAX_METADATA_BYTES)
    assert not f.add_peer("nometa", ut_metadata=1, metadata_size=None)
    assert not f.add_peer("disabled", ut_metadata=0, metadata_size=100)
    assert not f.add_peer("junk", ut_metadata=b"1", metadata_size=100)
    assert not f.add_peer("neg", ut_metadata=1, metadata_size=-5)
    small = MetadataFetcher(ih, max_metadata_bytes=1000)
    assert not small.add_peer("a", ut_metadata=1, metadata_size=1001)
    with pytest.raises(ValueError):
        MetadataFetcher(ih, max_metadata_bytes=31 << 20)
    with pytest.raises(ValueError):
        MetadataFetcher(b"short")


def test_unsolicited_data_from_unknown_peer_is_ignored(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=1)
    f = MetadataFetcher(hashlib.sha1(info).digest())
    assert f.on_data("nobody", 0, len(info), info, now=clock.now()) == []
    assert not f.done


@given(st.integers(-3, 5), st.integers(-10, 50_000), st.binary(max_size=64))
@settings(max_examples=200, deadline=None)
def test_fetcher_input_only_raises_metadata_error(piece: int, total: int, data: bytes) -> None:
    f = MetadataFetcher(bytes(20))
    f.add_peer("a", ut_metadata=1, metadata_size=40_000)
    f.next_requests("a", now=0.0)
    try:
        f.on_data("a", piece, total, data, now=1.0)
    except MetadataError:
        pass
    f.on_reject("a", piece, now=2.0)
    f.handle_timeout(now=100.0)


# ------------------------------------------------------------------------------------------- server


def test_server_rejects_without_metadata(clock: FakeClock) -> None:
    s = MetadataServer()
    assert s.metadata_size is None
    msg, data = decode_metadata_msg(s.on_request("p", 0, now=clock.now()))
    assert msg == MetadataMsg(MSG_REJECT, 0) and data == b""


def test_server_serves_pieces_and_rejects_out_of_range(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=2)
    s = MetadataServer()
    s.set_info(info)
    assert s.metadata_size == len(info)
    got = b""
    for piece in range(2):
        msg, data = decode_metadata_msg(s.on_request("p", piece, now=clock.now()))
        assert msg == MetadataMsg(MSG_DATA, piece, len(info))
        got += data
    assert got == info
    assert decode_metadata_msg(s.on_request("p", 2, now=clock.now()))[0].msg_type == MSG_REJECT


def test_server_flood_protection(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=4)
    s = MetadataServer(info)
    allowance = METADATA_SERVE_FACTOR * 4
    types = [decode_metadata_msg(s.on_request("p", 0, now=clock.now()))[0].msg_type for _ in range(allowance + 3)]
    assert types == [MSG_DATA] * allowance + [MSG_REJECT] * 3
    # other peers are unaffected, and the window ends
    assert decode_metadata_msg(s.on_request("q", 0, now=clock.now()))[0].msg_type == MSG_DATA
    clock.advance(60.0)
    assert decode_metadata_msg(s.on_request("p", 0, now=clock.now()))[0].msg_type == MSG_DATA
    assert s.stats()["rejected_flood"] == 3


def test_fetcher_against_flood_protected_server(clock: FakeClock, rng: random.Random) -> None:
    info = make_info(rng, pieces=3)
    peers = {"a": FakePeer(info)}
    f = fetcher_with(info, peers)
    assert run(f, peers, clock) == [MetadataComplete(info)]
    assert peers["a"].server.stats()["served"] == 3
