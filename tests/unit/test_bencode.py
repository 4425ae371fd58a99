from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.bencode import decode, decode_with_span, dict_value_span, encode
from minibt.errors import BencodeError

# Bencodable values as decode() returns them: bytes strings and keys, ints, lists, dicts.
values: st.SearchStrategy[Any] = st.recursive(
    st.integers(min_value=-(2**63), max_value=2**63) | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.binary(max_size=8), children, max_size=6)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"i0e", 0),
        (b"i-42e", -42),
        (b"i123456789012345678901234567890e", 123456789012345678901234567890),
        (b"0:", b""),
        (b"4:spam", b"spam"),
        (b"le", []),
        (b"l4:spami7ee", [b"spam", 7]),
        (b"de", {}),
        (b"d3:bar4:spam3:fooi42ee", {b"bar": b"spam", b"foo": 42}),
        (b"d1:ad1:bl0:eee", {b"a": {b"b": [b""]}}),
    ],
)
def test_decode_known_vectors(data: bytes, expected: Any) -> None:
    assert decode(data) == expected
    assert decode(bytearray(data)) == expected
    assert decode(memoryview(b"xx" + data)[2:]) == expected
    assert encode(expected) == data


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "empty"),
        (b"i1ex", "trailing data at byte 3"),
        (b"4:spamx", "trailing data at byte 6"),
        (b"l", "truncated"),
        (b"d1:a", "truncated"),
        (b"5:abc", "truncated string at byte 0"),
        (b"99999999999999999999999:a", "invalid string length at byte 0"),
        (b"i01e", "invalid integer at byte 0"),
        (b"i-0e", "invalid integer at byte 0"),
        (b"ie", "invalid integer"),
        (b"i1", "invalid integer"),
        (b"i" + b"9" * 40 + b"e", "invalid integer"),
        (b"03:abc", "invalid string length"),
        (b"-1:a", "unexpected byte 0x2d at byte 0"),
        (b"e", "unexpected 'e' at byte 0"),
        (b"di1ei2ee", "dict key must be a string at byte 1"),
        (b"dlei1ee", "dict key must be a string at byte 1"),
        (b"d1:ae", "dict key without a value"),
        (b"d1:bi1e1:ai2ee", "sorted"),
        (b"d1:ai1e1:ai2ee", "duplicated"),
        (b"x", "unexpected byte 0x78"),
    ],
)
def test_decode_rejects_malformed(data: bytes, fragment: str) -> None:
    with pytest.raises(BencodeError, match=fragment):
        decode(data)


def test_decode_rejects_non_bytes() -> None:
    with pytest.raises(BencodeError):
        decode("i1e")  # type: ignore[arg-type]


def test_deep_nesting_fails_without_recursion_error() -> None:
    for opener in (b"l", b"d1:a"):
        data = opener * 10000 + b"i1e" + b"e" * 10000
        with pytest.raises(BencodeError, match="nesting deeper than 64"):
            decode(data)


def test_depth_limit_is_exact() -> None:
    assert decode(b"l" * 5 + b"e" * 5, max_depth=5) == [[[[[]]]]]
    with pytest.raises(BencodeError, match="nesting deeper than 4"):
        decode(b"l" * 5 + b"e" * 5, max_depth=4)


def test_token_limit_is_exact() -> None:
    data = b"l" + b"i1e" * 9 + b"e"  # 10 items: the list and nine ints
    assert decode(data, max_tokens=10) == [1] * 9
    with pytest.raises(BencodeError, match="more than 9 tokens"):
        decode(data, max_tokens=9)


def test_huge_flat_input_decodes() -> None:
    # Roughly a 100 KiB non-compact tracker reply.
    peers = [
        {b"ip": b"10.0.%d.%d" % (i >> 8, i & 255), b"peer id": bytes(20), b"port": 6881} for i in range(1500)
    ]
    data = encode({b"interval": 1800, b"peers": peers})
    assert len(data) > 90_000
    assert decode(data)[b"peers"] == peers


@given(values)
def test_round_trip(value: Any) -> None:
    data = encode(value)
    assert decode(data) == value
    assert encode(decode(data)) == data


@given(st.binary(max_size=200))
def test_garbage_gives_value_or_bencode_error(data: bytes) -> None:
    try:
        decode(data, max_depth=8, max_tokens=50)
    except BencodeError:
        pass


@given(values, st.lists(st.tuples(st.integers(0, 10_000), st.binary(min_size=0, max_size=3)), max_size=4))
def test_mutated_encodings_give_value_or_bencode_error(value: Any, edits: list[tuple[int, bytes]]) -> None:
    data = bytearray(encode(value))
    for at, repl in edits:
        at %= len(data) + 1
        data[at : at + len(repl) // 2] = repl
    try:
        result = decode(bytes(data))
    except BencodeError:
        return
    assert encode(result) == bytes(data)  # accepted input must be canonical


def test_encode_accepts_str_and_bytes_keys_and_values() -> None:
    assert encode({"b": "é", b"a": [1, True]}) == b"d1:ali1ei1ee1:b2:\xc3\xa9e"
    assert encode((1, bytearray(b"x"), memoryview(b"yz"))) == b"li1e1:x2:yze"


@pytest.mark.parametrize("bad", [None, 1.5, {1: 2}, {"a": 1, b"a": 2}, object()])
def test_encode_rejects_unsupported(bad: Any) -> None:
    with pytest.raises(BencodeError):
        encode(bad)


def test_encode_rejects_circular_structure() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(BencodeError):
        encode(loop)


def test_dict_value_span_is_exact_raw_bytes() -> None:
    info = b"d6:lengthi5e4:name1:x12:piece lengthi16384e6:pieces20:" + bytes(range(20)) + b"e"
    # The 100 kB comment is skipped by its length prefix, not scanned.
    data = b"d8:announce5:http:7:comment100000:" + b"c" * 100000 + b"4:info" + info + b"5:zzzzzli1eee"
    span = dict_value_span(data, b"info")
    assert span is not None
    assert data[span[0] : span[1]] == info
    assert decode(data)[b"info"] == decode(info)


def test_dict_value_span_scalars_and_missing_keys() -> None:
    data = b"d1:ai1e1:b3:xyz1:cli1eee"
    assert dict_value_span(data, b"a") == (4, 7)
    assert dict_value_span(data, b"b") == (10, 15)
    assert dict_value_span(data, b"c") == (18, 23)
    assert dict_value_span(data, b"d") is None
    assert dict_value_span(b"l4:infoi1ee", b"info") is None
    assert dict_value_span(b"i1e", b"info") is None


def test_dict_value_span_ignores_nested_keys() -> None:
    data = b"d1:ad4:infoi1ee4:infoi2ee"
    span = dict_value_span(data, b"info")
    assert span is not None and data[span[0] : span[1]] == b"i2e"


@pytest.mark.parametrize(
    "data", [b"d4:infoi1e", b"d4:infoi1ee trailing", b"d4:infoi1e4:infoi2ee", b"d4:zzzzi1e4:infoi2ee"]
)
def test_dict_value_span_rejects_invalid(data: bytes) -> None:
    with pytest.raises(BencodeError):
        dict_value_span(data, b"info")


@settings(max_examples=50)
@given(st.dictionaries(st.binary(max_size=6), values, min_size=1, max_size=4), st.data())
def test_dict_value_span_matches_encoding(d: dict[bytes, Any], data: st.DataObject) -> None:
    key = data.draw(st.sampled_from(sorted(d)))
    enc = encode(d)
    span = dict_value_span(enc, key)
    assert span is not None
    assert enc[span[0] : span[1]] == encode(d[key])


def test_decode_with_span_matches_separate_calls() -> None:
    data = b"d1:ad1:xi1ee4:infod1:yi2ee1:zi3ee"
    value, span = decode_with_span(data, b"info")
    assert value == decode(data)
    assert span == dict_value_span(data, b"info") and span is not None
    assert data[span[0] : span[1]] == b"d1:yi2ee"
    assert decode_with_span(data, None) == (value, None)
