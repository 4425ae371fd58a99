"""KRPC codec (BEP 5, BEP 32, BEP 42 'ip'): BEP vectors both ways, round trips, every decode rule, garbage."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt import bencode
from minibt.errors import CloseReason, LocalProtocolError, RemoteProtocolError
from minibt.krpc import (
    GENERIC_ERROR,
    KRPC_VERSION,
    MAX_DATAGRAM_BYTES,
    MAX_KRPC_TEXT_CHARS,
    METHOD_UNKNOWN,
    PROTOCOL_ERROR,
    AnnouncePeer,
    ErrorReply,
    FindNode,
    GetPeers,
    KrpcError,
    Message,
    NodeInfo,
    Ping,
    Response,
    UnknownQuery,
    decode,
    decode_nodes,
    decode_nodes6,
    decode_peer,
    encode,
    encode_nodes,
    encode_nodes6,
    encode_peer,
    is_krpc,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "bep5"
ABC = b"abcdefghij0123456789"  # the node ids and info-hash of BEP 5's examples
MNO = b"mnopqrstuvwxyz123456"
NUM = b"0123456789abcdefghij"
NODE = NodeInfo(MNO, ("192.0.2.1", 6881))  # the compact node put in place of BEP 5's "def456..." placeholder


def vector(name: str) -> bytes:
    lines = (VECTORS / f"{name}.hex").read_text().splitlines()
    assert lines[0].startswith("# BEP 5")
    return bytes.fromhex("".join(line for line in lines if not line.startswith("#")))


# ---------------------------------------------------------------- BEP 5's example packets, both directions

EXPECTED: dict[str, Message] = {
    "ping_query": Ping(b"aa", ABC),
    "ping_response": Response(b"aa", MNO),
    "find_node_query": FindNode(b"aa", ABC, MNO),
    "find_node_response": Response(b"aa", NUM, nodes=(NODE,)),
    "get_peers_query": GetPeers(b"aa", ABC, MNO),
    "get_peers_response_values": Response(
        b"aa", ABC, values=(("97.120.106.101", 11893), ("105.100.104.116", 28269)), token=b"aoeusnth"
    ),
    "get_peers_response_nodes": Response(b"aa", ABC, nodes=(NODE,), token=b"aoeusnth"),
    "announce_peer_query": AnnouncePeer(b"aa", ABC, MNO, 6881, b"aoeusnth"),
    "announce_peer_query_implied": AnnouncePeer(b"aa", ABC, MNO, 6881, b"aoeusnth", implied_port=True),
    "announce_peer_response": Response(b"aa", MNO),
    "error_generic": ErrorReply(b"aa", GENERIC_ERROR, "A Generic Error Ocurred"),
}


def test_vectors_are_the_bep_text() -> None:
    assert vector("ping_query") == b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"
    assert vector("error_generic") == b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee"
    assert vector("get_peers_response_values") == (
        b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re"
    )
    assert len(list(VECTORS.glob("*.hex"))) == len(EXPECTED) + 2  # + the two placeholder texts


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bep5_vector_decodes_to_message(name: str) -> None:
    assert decode(vector(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bep5_vector_encodes_byte_for_byte(name: str) -> None:
    assert encode(EXPECTED[name]) == vector(name)


@pytest.mark.parametrize("name", ["find_node_response_bep_text", "get_peers_response_nodes_bep_text"])
def test_bep5_placeholder_nodes_refused_with_tid(name: str) -> None:
    with pytest.raises(KrpcError) as info:
        decode(vector(name))
    assert (info.value.code, info.value.tid) == (PROTOCOL_ERROR, b"aa")
    assert "multiple of 26" in info.value.detail


def test_version_added_only_when_asked() -> None:
    ping = EXPECTED["ping_query"]
    with_v = encode(ping, version=KRPC_VERSION)
    assert with_v == b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:v4:MB011:y1:qe"
    assert decode(with_v) == ping
    assert b"1:v" not in encode(ping)


# ---------------------------------------------------------------- round trips (BEP 32 included)

tids = st.binary(min_size=1, max_size=16)
ids = st.binary(min_size=20, max_size=20)
ports = st.integers(0, 0xFFFF)
tokens = st.binary(min_size=1, max_size=64)
wants = st.frozensets(st.sampled_from(["n4", "n6"]))
texts = st.text(max_size=MAX_KRPC_TEXT_CHARS)
v4_addrs = st.tuples(st.binary(min_size=4, max_size=4).map(lambda b: str(ipaddress.IPv4Address(b))), ports)
v6_addrs = st.tuples(st.binary(min_size=16, max_size=16).map(lambda b: ipaddress.IPv6Address(b).compressed), ports)
addrs = st.one_of(v4_addrs, v6_addrs)
KNOWN = {"ping", "find_node", "get_peers", "announce_peer"}

messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Ping, tids, ids),
    st.builds(FindNode, tids, ids, ids, wants),
    st.builds(GetPeers, tids, ids, ids, wants),
    st.builds(AnnouncePeer, tids, ids, ids, st.integers(1, 0xFFFF), tokens, st.just(False)),
    st.builds(AnnouncePeer, tids, ids, ids, ports, tokens, st.just(True)),
    st.builds(UnknownQuery, tids, ids, texts.filter(lambda m: m not in KNOWN)),
    st.builds(
        Response,
        tids,
        ids,
        nodes=st.lists(st.builds(NodeInfo, ids, v4_addrs), max_size=8).map(tuple),
        nodes6=st.lists(st.builds(NodeInfo, ids, v6_addrs), max_size=8).map(tuple),
        values=st.lists(addrs, max_size=30).map(tuple),
        token=st.none() | tokens,
        ip=st.none() | addrs,
    ),
    st.builds(ErrorReply, tids, st.integers(-(2**63), 2**63), texts),
)


@given(messages)
def test_round_trip_every_message_type(msg: Message) -> None:
    data = encode(msg)
    assert len(data) <= MAX_DATAGRAM_BYTES and is_krpc(data)
    assert decode(data) == msg
    assert encode(decode(data)) == data  # canonical in, same bytes out
    assert decode(encode(msg, version=KRPC_VERSION)) == msg


def test_round_trip_ipv6_nodes6_values_want_and_ip() -> None:
    n6 = NodeInfo(ABC, ("2001:db8::1", 6881))
    msg = Response(b"t1", MNO, nodes=(NODE,), nodes6=(n6,), values=(("192.0.2.7", 1), ("2001:db8::2", 65535)),
                   token=b"tok", ip=("2001:db8::9", 51413))
    data = encode(msg)
    assert b"6:nodes638:" + ABC + ipaddress.IPv6Address("2001:db8::1").packed + b"\x1a\xe1" in data
    assert b"2:ip18:" in data and b"6:valuesl6:" in data
    assert decode(data) == msg
    query = FindNode(b"t2", ABC, MNO, want=frozenset({"n6", "n4"}))
    assert b"4:wantl2:n42:n6e" in encode(query)
    assert decode(encode(query)) == query


# ---------------------------------------------------------------- validation: every rule of the design


def krpc(body: dict[bytes, Any], t: Any = b"aa") -> bytes:
    """A datagram with transaction id ``t`` (left out when None) and the other top-level keys ``body``."""
    d = dict(body)
    if t is not None:
        d[b"t"] = t
    return bencode.encode(d)


def query(method: bytes, args: Any, t: Any = b"aa") -> bytes:
    return krpc({b"y": b"q", b"q": method, b"a": args}, t)


def response(r: Any, **top: Any) -> bytes:
    return krpc({b"y": b"r", b"r": r, **{k.encode(): v for k, v in top.items()}})


ANNOUNCE = {b"id": ABC, b"info_hash": MNO, b"port": 6881, b"token": b"aoeusnth"}

REFUSED: dict[str, tuple[bytes, int, bytes | None]] = {
    # transaction id
    "tid empty": (query(b"ping", {b"id": ABC}, t=b""), PROTOCOL_ERROR, None),
    "tid 17 bytes": (query(b"ping", {b"id": ABC}, t=b"x" * 17), PROTOCOL_ERROR, None),
    "tid an integer": (query(b"ping", {b"id": ABC}, t=7), PROTOCOL_ERROR, None),
    "tid missing": (query(b"ping", {b"id": ABC}, t=None), PROTOCOL_ERROR, None),
    # message type
    "y missing": (krpc({b"q": b"ping", b"a": {b"id": ABC}}), PROTOCOL_ERROR, b"aa"),
    "y unknown": (krpc({b"y": b"x"}), PROTOCOL_ERROR, b"aa"),
    "y an integer": (krpc({b"y": 1}), PROTOCOL_ERROR, b"aa"),
    # ids of the wrong length or type
    "query id 19 bytes": (query(b"ping", {b"id": ABC[:19]}), PROTOCOL_ERROR, b"aa"),
    "query id 21 bytes": (query(b"find_node", {b"id": ABC + b"x", b"target": MNO}), PROTOCOL_ERROR, b"aa"),
    "query id missing": (query(b"get_peers", {b"info_hash": MNO}), PROTOCOL_ERROR, b"aa"),
    "query id an integer": (query(b"ping", {b"id": 5}), PROTOCOL_ERROR, b"aa"),
    "response id 19 bytes": (response({b"id": MNO[:19]}), PROTOCOL_ERROR, b"aa"),
    "response id missing": (response({b"token": b"x"}), PROTOCOL_ERROR, b"aa"),
    "target 19 bytes": (query(b"find_node", {b"id": ABC, b"target": MNO[:19]}), PROTOCOL_ERROR, b"aa"),
    "target missing": (query(b"find_node", {b"id": ABC}), PROTOCOL_ERROR, b"aa"),
    "info_hash 21 bytes": (query(b"get_peers", {b"id": ABC, b"info_hash": MNO + b"!"}), PROTOCOL_ERROR, b"aa"),
    "announce info_hash a list": (query(b"announce_peer", {**ANNOUNCE, b"info_hash": [MNO]}), PROTOCOL_ERROR, b"aa"),
    # query shape
    "q an integer": (krpc({b"y": b"q", b"q": 1, b"a": {b"id": ABC}}), PROTOCOL_ERROR, b"aa"),
    "a a list": (query(b"ping", [ABC]), PROTOCOL_ERROR, b"aa"),
    "a missing": (krpc({b"y": b"q", b"q": b"ping"}), PROTOCOL_ERROR, b"aa"),
    "unknown method without a": (krpc({b"y": b"q", b"q": b"vote"}), METHOD_UNKNOWN, b"aa"),
    "unknown method, bad id": (query(b"vote", {b"id": b"short"}), METHOD_UNKNOWN, b"aa"),
    "want not a list": (query(b"get_peers", {b"id": ABC, b"info_hash": MNO, b"want": b"n4"}), PROTOCOL_ERROR, b"aa"),
    # announce_peer port and token
    "port 0 without implied_port": (query(b"announce_peer", {**ANNOUNCE, b"port": 0}), PROTOCOL_ERROR, b"aa"),
    "port 0 with implied_port 0": (query(b"announce_peer", {**ANNOUNCE, b"port": 0, b"implied_port": 0}),
                                   PROTOCOL_ERROR, b"aa"),
    "port 65536": (query(b"announce_peer", {**ANNOUNCE, b"port": 65536}), PROTOCOL_ERROR, b"aa"),
    "port -1 with implied_port": (query(b"announce_peer", {**ANNOUNCE, b"port": -1, b"implied_port": 1}),
                                  PROTOCOL_ERROR, b"aa"),
    "port a string": (query(b"announce_peer", {**ANNOUNCE, b"port": b"6881"}), PROTOCOL_ERROR, b"aa"),
    "port missing": (query(b"announce_peer", {k: v for k, v in ANNOUNCE.items() if k != b"port"}), PROTOCOL_ERROR, b"aa"),
    "implied_port a string": (query(b"announce_peer", {**ANNOUNCE, b"implied_port": b"1"}), PROTOCOL_ERROR, b"aa"),
    "token empty": (query(b"announce_peer", {**ANNOUNCE, b"token": b""}), PROTOCOL_ERROR, b"aa"),
    "token 65 bytes": (query(b"announce_peer", {**ANNOUNCE, b"token": b"t" * 65}), PROTOCOL_ERROR, b"aa"),
    "token an integer": (query(b"announce_peer", {**ANNOUNCE, b"token": 12}), PROTOCOL_ERROR, b"aa"),
    "token missing": (query(b"announce_peer", {k: v for k, v in ANNOUNCE.items() if k != b"token"}), PROTOCOL_ERROR, b"aa"),
    "response token empty": (response({b"id": MNO, b"token": b""}), PROTOCOL_ERROR, b"aa"),
    # response shape, nodes, nodes6, values
    "r a list": (krpc({b"y": b"r", b"r": [MNO]}), PROTOCOL_ERROR, b"aa"),
    "r missing": (krpc({b"y": b"r"}), PROTOCOL_ERROR, b"aa"),
    "nodes 25 bytes": (response({b"id": MNO, b"nodes": bytes(25)}), PROTOCOL_ERROR, b"aa"),
    "nodes 27 bytes": (response({b"id": MNO, b"nodes": bytes(27)}), PROTOCOL_ERROR, b"aa"),
    "nodes a list": (response({b"id": MNO, b"nodes": [bytes(26)]}), PROTOCOL_ERROR, b"aa"),
    "nodes6 37 bytes": (response({b"id": MNO, b"nodes6": bytes(37)}), PROTOCOL_ERROR, b"aa"),
    "nodes6 of 26-byte entries": (response({b"id": MNO, b"nodes6": bytes(52)}), PROTOCOL_ERROR, b"aa"),
    "values a string": (response({b"id": MNO, b"values": bytes(6)}), PROTOCOL_ERROR, b"aa"),
    # error replies
    "e a string": (krpc({b"y": b"e", b"e": b"201 oops"}), PROTOCOL_ERROR, b"aa"),
    "e without message": (krpc({b"y": b"e", b"e": [201]}), PROTOCOL_ERROR, b"aa"),
    "e code a string": (krpc({b"y": b"e", b"e": [b"201", b"oops"]}), PROTOCOL_ERROR, b"aa"),
    "e message an integer": (krpc({b"y": b"e", b"e": [201, 5]}), PROTOCOL_ERROR, b"aa"),
    # not a dict, not bencode, too big
    "a list": (b"l1:t2:aae", PROTOCOL_ERROR, None),
    "an integer": (b"i42e", PROTOCOL_ERROR, None),
    "a string": (b"4:spam", PROTOCOL_ERROR, None),
    "empty": (b"", PROTOCOL_ERROR, None),
    "truncated": (vector("ping_query")[:-1], PROTOCOL_ERROR, None),
    "trailing data": (vector("ping_query") + b"x", PROTOCOL_ERROR, None),
    "keys not sorted": (b"d1:y1:q1:t2:aa1:q4:ping1:ad2:id20:" + ABC + b"ee", PROTOCOL_ERROR, None),
    "nested too deep": (response({b"id": MNO, b"x": [[[[[[[[b"deep"]]]]]]]]}), PROTOCOL_ERROR, None),
    "utp syn": (vector("ping_query").replace(b"d", b"\x41", 1), PROTOCOL_ERROR, None),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_decode_refuses_with_code_and_tid(case: str) -> None:
    data, code, tid = REFUSED[case]
    with pytest.raises(KrpcError) as info:
        decode(data)
    assert (info.value.code, info.value.tid) == (code, tid)


def padded(size: int) -> bytes:
    """A valid ping response of exactly ``size`` bytes (an unknown key pads it)."""
    n = size
    while True:
        data = response({b"id": MNO}, zz=b"p" * n)
        if len(data) <= size:
            return response({b"id": MNO}, zz=b"p" * (n + size - len(data)))
        n -= len(data) - size


def test_datagram_cap_refuses_one_byte_over() -> None:
    assert len(padded(MAX_DATAGRAM_BYTES)) == MAX_DATAGRAM_BYTES
    assert decode(padded(MAX_DATAGRAM_BYTES)) == Response(b"aa", MNO)
    with pytest.raises(KrpcError) as info:
        decode(padded(MAX_DATAGRAM_BYTES + 1))
    assert (info.value.code, info.value.tid) == (PROTOCOL_ERROR, None)


def test_every_prefix_of_every_vector_is_refused() -> None:
    for path in sorted(VECTORS.glob("*.hex")):
        data = vector(path.stem)
        for n in range(len(data)):
            with pytest.raises(KrpcError):
                decode(data[:n])


def test_limits_at_their_edges_are_accepted() -> None:
    assert decode(query(b"ping", {b"id": ABC}, t=b"x" * 16)) == Ping(b"x" * 16, ABC)
    assert decode(query(b"ping", {b"id": ABC}, t=b"\x00")) == Ping(b"\x00", ABC)
    implied = decode(query(b"announce_peer", {**ANNOUNCE, b"port": 0, b"implied_port": 1}))
    assert implied == AnnouncePeer(b"aa", ABC, MNO, 0, b"aoeusnth", implied_port=True)
    nonzero = decode(query(b"announce_peer", {**ANNOUNCE, b"implied_port": 7}))  # BEP 5: "present and non-zero"
    assert isinstance(nonzero, AnnouncePeer) and nonzero.implied_port
    assert decode(query(b"announce_peer", {**ANNOUNCE, b"port": 65535, b"token": b"t" * 64})) == AnnouncePeer(
        b"aa", ABC, MNO, 65535, b"t" * 64
    )
    assert decode(query(b"announce_peer", {**ANNOUNCE, b"port": 1})) == AnnouncePeer(b"aa", ABC, MNO, 1, b"aoeusnth")


def test_unknown_keys_are_ignored() -> None:
    data = krpc({b"y": b"q", b"q": b"get_peers", b"v": b"UT\x01\x02", b"ro": 1, b"zz": [1, {b"k": b"v"}],
                 b"a": {b"id": ABC, b"info_hash": MNO, b"scrape": 1, b"noseed": 0}})
    assert decode(data) == GetPeers(b"aa", ABC, MNO)
    assert decode(response({b"id": MNO, b"p": 6881, b"samples": bytes(40)}, v=b"LT\x01\x00")) == Response(b"aa", MNO)


def test_values_of_other_sizes_are_skipped() -> None:
    v6 = ipaddress.IPv6Address("2001:db8::5").packed + b"\x00\x50"
    values = [bytes([10, 0, 0, 1, 0, 80]), b"short", bytes(7), 5, [b"x"], v6, bytes(17)]
    assert decode(response({b"id": MNO, b"values": values})).values == (  # type: ignore[union-attr]
        ("10.0.0.1", 80),
        ("2001:db8::5", 80),
    )


def test_bep42_ip_kept_when_well_formed_else_ignored() -> None:
    ip4 = bytes([203, 0, 113, 9]) + b"\x1a\xe1"
    assert decode(response({b"id": MNO}, ip=ip4)) == Response(b"aa", MNO, ip=("203.0.113.9", 6881))
    for bad in (b"\x01\x02\x03", bytes(7), 5, [ip4]):
        assert decode(response({b"id": MNO}, ip=bad)) == Response(b"aa", MNO)


def test_want_keeps_only_n4_and_n6() -> None:
    data = query(b"find_node", {b"id": ABC, b"target": MNO, b"want": [b"n6", b"n9", 4, b"n4", [b"n4"]]})
    assert decode(data) == FindNode(b"aa", ABC, MNO, want=frozenset({"n4", "n6"}))


def test_unknown_method_is_a_query_to_answer_with_204() -> None:
    msg = decode(query(b"sample_infohashes", {b"id": ABC, b"target": MNO}))
    assert msg == UnknownQuery(b"aa", ABC, "sample_infohashes")
    assert decode(query(b"\xff\xfeget", {b"id": ABC})) == UnknownQuery(b"aa", ABC, "\ufffd\ufffdget")
    long = decode(query(b"m" * 1000, {b"id": ABC}))
    assert isinstance(long, UnknownQuery) and long.method == "m" * MAX_KRPC_TEXT_CHARS


def test_error_message_is_bounded_text() -> None:
    msg = decode(krpc({b"y": b"e", b"e": [202, b"x" * 2000 + b"\xff", b"extra"]}))
    assert msg == ErrorReply(b"aa", 202, "x" * MAX_KRPC_TEXT_CHARS)
    assert decode(krpc({b"y": b"e", b"e": [203, b"bad \xfftoken"]})) == ErrorReply(b"aa", 203, "bad \ufffdtoken")


def test_krpc_error_is_a_value_error_and_a_remote_protocol_error() -> None:
    with pytest.raises(KrpcError) as info:
        decode(b"i1e")
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, RemoteProtocolError)
    assert err.reason is CloseReason.MALFORMED_MESSAGE and err.detail in str(err)


def test_refused_query_can_be_answered_with_its_tid() -> None:
    with pytest.raises(KrpcError) as info:
        decode(query(b"announce_peer", {**ANNOUNCE, b"port": 0}, t=b"\x00\x07"))
    err = info.value
    assert err.tid is not None
    answer = encode(ErrorReply(err.tid, err.code, "bad port"))
    assert answer == b"d1:eli203e8:bad porte1:t2:\x00\x071:y1:ee"


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = vector("ping_query")
    assert decode(bytearray(data)) == decode(memoryview(data)) == EXPECTED["ping_query"]  # type: ignore[arg-type]


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(KrpcError):
        decode("d1:t2:aae")  # type: ignore[arg-type]


# ---------------------------------------------------------------- encode refuses what decode would refuse

BAD_MESSAGES: dict[str, Any] = {
    "tid empty": Ping(b"", ABC),
    "tid 17 bytes": Ping(b"x" * 17, ABC),
    "node id 19 bytes": Ping(b"aa", ABC[:19]),
    "target 21 bytes": FindNode(b"aa", ABC, MNO + b"!"),
    "want n5": GetPeers(b"aa", ABC, MNO, want=frozenset({"n5"})),
    "port 0 without implied_port": AnnouncePeer(b"aa", ABC, MNO, 0, b"tok"),
    "port 70000": AnnouncePeer(b"aa", ABC, MNO, 70000, b"tok", implied_port=True),
    "token empty": AnnouncePeer(b"aa", ABC, MNO, 6881, b""),
    "method too long": UnknownQuery(b"aa", ABC, "x" * (MAX_KRPC_TEXT_CHARS + 1)),
    "ipv6 in nodes": Response(b"aa", MNO, nodes=(NodeInfo(ABC, ("::1", 1)),)),
    "ipv4 in nodes6": Response(b"aa", MNO, nodes6=(NodeInfo(ABC, ("127.0.0.1", 1)),)),
    "node id 21 bytes in nodes": Response(b"aa", MNO, nodes=(NodeInfo(ABC + b"!", ("127.0.0.1", 1)),)),
    "host name in values": Response(b"aa", MNO, values=(("example.com", 80),)),
    "port 70000 in values": Response(b"aa", MNO, values=(("10.0.0.1", 70000),)),
    "host name as ip": Response(b"aa", MNO, ip=("example.com", 80)),
    "response token empty": Response(b"aa", MNO, token=b""),
    "over the datagram cap": Response(b"aa", MNO, values=(("2001:db8::1", 1),) * 200),
    "error message too long": ErrorReply(b"aa", 201, "x" * (MAX_KRPC_TEXT_CHARS + 1)),
    "error message not unicode": ErrorReply(b"aa", 201, "\udc80"),
    "not a message": object(),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
def test_encode_refuses_what_decode_would_not_return(case: str) -> None:
    with pytest.raises(LocalProtocolError):
        encode(BAD_MESSAGES[case])


def test_encode_accepts_non_canonical_address_text() -> None:
    msg = Response(b"aa", MNO, values=(("2001:DB8:0::1", 80),))
    assert decode(encode(msg)) == Response(b"aa", MNO, values=(("2001:db8::1", 80),))


# ---------------------------------------------------------------- compact forms and the demux test


def test_compact_nodes_round_trip_and_refuse_partial_entries() -> None:
    nodes = (NODE, NodeInfo(ABC, ("10.1.2.3", 0)))
    blob = encode_nodes(nodes)
    assert len(blob) == 52 and blob[:26] == MNO + bytes([192, 0, 2, 1, 0x1A, 0xE1])
    assert decode_nodes(blob) == nodes
    nodes6 = (NodeInfo(MNO, ("2001:db8::1", 6881)), NodeInfo(ABC, ("::1", 65535)))
    blob6 = encode_nodes6(nodes6)
    assert len(blob6) == 76 and decode_nodes6(blob6) == nodes6
    assert decode_nodes(b"") == decode_nodes6(b"") == ()
    for bad, fn in ((blob[:-1], decode_nodes), (blob6 + b"\x00", decode_nodes6), (bytes(26), decode_nodes6)):
        with pytest.raises(KrpcError) as info:
            fn(bad)
        assert info.value.code == PROTOCOL_ERROR


def test_compact_peer_ipv4_and_ipv6() -> None:
    assert encode_peer(("1.2.3.4", 6881)) == b"\x01\x02\x03\x04\x1a\xe1"
    assert decode_peer(b"\x01\x02\x03\x04\x1a\xe1") == ("1.2.3.4", 6881)
    packed6 = encode_peer(("2001:db8::7", 443))
    assert len(packed6) == 18 and decode_peer(packed6) == ("2001:db8::7", 443)
    for bad in (b"", bytes(5), bytes(7), bytes(19)):
        with pytest.raises(KrpcError):
            decode_peer(bad)
    for addr in (("host.example", 1), ("1.2.3.4", -1), ("1.2.3.4", 65536)):
        with pytest.raises(LocalProtocolError):
            encode_peer(addr)


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"d1:t2:aae", True), (b"d", True), (b"", False), (b"\x41\x00", False), (b"\x01\x00", False),
     (b"\x21", False), (b"\x00\x00\x00\x01", False), (b"l1:ae", False), (b"i1e", False)],
)
def test_is_krpc_tells_dht_from_utp_and_tracker(data: bytes, expected: bool) -> None:
    assert is_krpc(data) is expected


# ---------------------------------------------------------------- garbage: only KrpcError, ever


def decode_or_error(data: bytes) -> Message | KrpcError:
    try:
        return decode(data)
    except KrpcError as e:
        assert e.code in (PROTOCOL_ERROR, METHOD_UNKNOWN)
        assert e.tid is None or 1 <= len(e.tid) <= 16
        return e


def check_decoded(data: bytes) -> None:
    """decode() gives a message or KrpcError; a message encodes back and decodes to itself."""
    msg = decode_or_error(data)
    if not isinstance(msg, KrpcError):
        assert is_krpc(data)
        assert decode(encode(msg)) == msg


@given(st.binary(max_size=MAX_DATAGRAM_BYTES + 10))
def test_decode_arbitrary_bytes_raises_only_krpc_error(data: bytes) -> None:
    check_decoded(data)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    data = bytearray(encode(draw(messages), version=draw(st.sampled_from([None, KRPC_VERSION]))))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        kind = draw(st.integers(0, 5))
        if kind == 0:
            del data[pos:]
        elif kind == 1 and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == 2:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif kind == 3:
            del data[pos : pos + draw(st.integers(1, 30))]
        elif kind == 4 and pos < len(data):
            data[pos] = draw(st.sampled_from(b"0123456789:deil-"))
        else:
            data[pos:pos] = str(draw(st.sampled_from([0, 1, 19, 20, 21, 26, 38, 65535, 65536, 10**30]))).encode()
    return bytes(data)


@given(mutated_messages())
def test_decode_mutated_valid_messages_raises_only_krpc_error(data: bytes) -> None:
    check_decoded(data)


KEYS = [b"t", b"y", b"q", b"a", b"r", b"e", b"id", b"target", b"info_hash", b"port", b"implied_port", b"token",
        b"nodes", b"nodes6", b"values", b"want", b"ip", b"v"]
leaves = st.one_of(
    st.sampled_from([b"q", b"r", b"e", b"ping", b"find_node", b"get_peers", b"announce_peer", b"n4", b"n6", ABC, b"aa"]),
    st.binary(max_size=40),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 6881, 65535, 65536, -1, 201, 204]),
)
bvalues = st.recursive(
    leaves,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=6)),
    max_leaves=20,
)


@given(st.dictionaries(st.sampled_from(KEYS), bvalues, max_size=7))
def test_decode_wrong_types_raise_only_krpc_error(d: dict[bytes, Any]) -> None:
    check_decoded(bencode.encode(d))
