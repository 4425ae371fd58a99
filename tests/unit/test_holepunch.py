"""holepunch.py: the BEP 55 codec byte for byte, malformed messages, and the helpers the roles use."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt.errors import CloseReason, LocalProtocolError, RemoteProtocolError
from minibt.holepunch import (
    V4_LEN,
    V6_LEN,
    HolepunchError,
    HpError,
    HpMessage,
    HpMsgType,
    _Window,
    decode_hp,
    encode_hp,
    is_local,
)

# BEP 55's layout written out by hand: msg_type, addr_type, addr, port (BE), err_code (BE u32)
VECTORS = [
    (HpMessage(HpMsgType.RENDEZVOUS, ("198.51.100.7", 6881)), "00" "00" "c6336407" "1ae1" "00000000"),
    (HpMessage(HpMsgType.CONNECT, ("10.0.0.2", 51413)), "01" "00" "0a000002" "c8d5" "00000000"),
    (HpMessage(HpMsgType.ERROR, ("1.2.3.4", 1), HpError.NOT_CONNECTED), "02" "00" "01020304" "0001" "00000002"),
    (HpMessage(HpMsgType.CONNECT, ("2001:db8::1", 443)),
     "01" "01" "20010db8000000000000000000000001" "01bb" "00000000"),
    (HpMessage(HpMsgType.ERROR, ("2001:db8::2", 65535), HpError.NO_SELF),
     "02" "01" "20010db8000000000000000000000002" "ffff" "00000004"),
]


@pytest.mark.parametrize(("msg", "hexed"), VECTORS)
def test_vectors_both_ways(msg: HpMessage, hexed: str) -> None:
    wire = bytes.fromhex(hexed)
    assert len(wire) == (V4_LEN if ":" not in msg.addr[0] else V6_LEN)
    assert encode_hp(msg) == wire
    assert decode_hp(wire) == msg


def test_lengths_are_12_and_24() -> None:
    assert (V4_LEN, V6_LEN) == (12, 24)


@pytest.mark.parametrize(("hexed", "msg"), [
    # libtorrent sends rendezvous and connect without err_code (seen in test_holepunch_nat.py)
    ("01" "00" "c6120101" "1ae1", HpMessage(HpMsgType.CONNECT, ("198.18.1.1", 6881))),
    ("00" "01" "20010db8000000000000000000000009" "1ae1", HpMessage(HpMsgType.RENDEZVOUS, ("2001:db8::9", 6881))),
])
def test_libtorrents_short_form_is_read(hexed: str, msg: HpMessage) -> None:
    assert decode_hp(bytes.fromhex(hexed)) == msg


@pytest.mark.parametrize("payload", [
    b"",
    bytes(11),  # one short of IPv4
    bytes(13),
    bytes(23),
    bytes(25),
    bytes.fromhex("00" "01" "0a000002" "1ae1" "00000000"),  # says IPv6, 12 bytes
    bytes.fromhex("00" "00") + bytes(16) + bytes.fromhex("1ae1" "00000000"),  # says IPv4, 24 bytes
    bytes.fromhex("00" "02" "0a000002" "1ae1" "00000000"),  # address type 2
    bytes.fromhex("03" "00" "0a000002" "1ae1" "00000000"),  # message type 3
    bytes.fromhex("00" "00" "0a000002" "0000" "00000000"),  # port 0
    bytes.fromhex("02" "00" "0a000002" "1ae1" "00000000"),  # an error without a code
    bytes.fromhex("01" "00" "0a000002" "1ae1" "00000001"),  # a connect with a code
    bytes.fromhex("02" "00" "0a000002" "1ae1"),  # libtorrent's short form for an error: no code
    bytes.fromhex("00" "01" "0a000002" "1ae1"),  # short, but says IPv6
    bytes.fromhex("00" "00") + bytes(16) + bytes.fromhex("1ae1"),  # 20 bytes, but says IPv4
])
def test_malformed_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(HolepunchError) as e:
        decode_hp(payload)
    assert isinstance(e.value, RemoteProtocolError) and e.value.reason is CloseReason.MALFORMED_MESSAGE


@given(st.binary(max_size=64))
def test_garbage_never_raises_anything_else(data: bytes) -> None:
    try:
        msg = decode_hp(data)
    except HolepunchError:
        return
    # what decodes re-encodes to the same bytes (libtorrent's short form gets BEP 55's err_code = 0)
    assert encode_hp(msg) == (data + bytes(4) if len(data) in (8, 20) else data)


@pytest.mark.parametrize("msg", [
    HpMessage(HpMsgType.CONNECT, ("not-an-ip", 1)),
    HpMessage(HpMsgType.CONNECT, ("1.2.3.4", 0)),
    HpMessage(HpMsgType.CONNECT, ("1.2.3.4", 70000)),
    HpMessage(HpMsgType.ERROR, ("1.2.3.4", 1), 1 << 32),
])
def test_encode_refuses_what_cannot_be_sent(msg: HpMessage) -> None:
    with pytest.raises(LocalProtocolError):
        encode_hp(msg)


def test_error_codes_are_beps() -> None:
    assert [(e.name, e.value) for e in HpError] == [
        ("NO_SUCH_PEER", 1), ("NOT_CONNECTED", 2), ("NO_SUPPORT", 3), ("NO_SELF", 4)]
    assert struct.unpack(">I", encode_hp(HpMessage(HpMsgType.ERROR, ("1.2.3.4", 5), HpError.NO_SUPPORT))[-4:]) == (3,)


@pytest.mark.parametrize(("ip", "local"), [
    ("127.0.0.1", True), ("10.1.2.3", True), ("172.20.0.1", True), ("192.168.1.9", True), ("100.64.0.1", True),
    ("169.254.1.1", True), ("0.0.0.0", True), ("::1", True), ("fd00::1", True), ("fe80::1", True),
    ("::ffff:192.168.1.1", True), ("garbage", True),
    ("198.18.1.1", False), ("203.0.113.5", False), ("8.8.8.8", False), ("2001:db8::1", False),
])
def test_local_means_lan_or_loopback_not_pythons_is_private(ip: str, local: bool) -> None:
    assert is_local(ip) is local


def test_window_counts_within_sixty_seconds() -> None:
    w = _Window()
    assert all(w.hit("k", 3, now=t) for t in (0.0, 1.0, 2.0))
    assert not w.hit("k", 3, now=30.0)
    assert w.hit("other", 3, now=30.0)
    assert w.hit("k", 3, now=60.5)  # the first one left the window
    w.forget("k")
    assert all(w.hit("k", 3, now=61.0) for _ in range(3))
