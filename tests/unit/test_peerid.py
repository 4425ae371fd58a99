"""Client names decoded from peer ids (wiki.theory.org peer_id conventions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from minibt.peerid import AZUREUS_CLIENTS, PEER_ID_PREFIX, decode_client


def pid(prefix: bytes) -> bytes:
    return prefix + b"x" * (20 - len(prefix))


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"-TR3000-", "Transmission 3.00"),
        (b"-TR2940-", "Transmission 2.94"),
        (b"-TR111Z-", "Transmission 1.11+"),
        (b"-TR0072-", "Transmission 0.72"),
        (b"-TR0006-", "Transmission 0.6"),
        (b"-TR4060-", "Transmission 4.0.6"),
        (b"-TR400B-", "Transmission 4.0.0 Beta"),
        (b"-LT2010-", "libtorrent (Rasterbar) 2.0.1"),
        (b"-LT20A0-", "libtorrent (Rasterbar) 2.0.10"),
        (b"-LT1234-", "libtorrent (Rasterbar) 1.2.3.4"),
        (b"-lt0D80-", "libTorrent (rakshasa) 0.13.8"),
        (b"-qB4500-", "qBittorrent 4.5.0"),
        (b"-UT3550-", "\u00b5Torrent 3.5.5"),
        (b"-DE211s-", "Deluge 2.1.1.28"),
        (b"-MB0100-", "minibt 0.1.0"),
        (b"-ZZ1000-", "unknown (ZZ) 1.0.0"),
        (b"A2-1-36-0-", "aria2 1.36.0"),
        (b"M4-3-6--", "BitTorrent 4.3.6"),
        (b"M7-10-3-", "BitTorrent 7.10.3"),
        (b"S58B-----", "Shadow's client 5.8.11"),
        (b"T03I-----", "BitTornado 0.3.18"),
    ],
)
def test_decode_known_peer_ids(prefix: bytes, expected: str) -> None:
    assert decode_client(pid(prefix)) == expected


def test_decode_our_own_prefix() -> None:
    assert decode_client(pid(PEER_ID_PREFIX)).startswith("minibt ")


def test_decode_unknown_and_missing() -> None:
    assert decode_client(None) == ""
    assert decode_client(b"") == ""
    assert decode_client(bytes(range(20))) == "unknown"
    assert decode_client(pid(b"EXBC\x01\x02")) == "unknown"
    assert decode_client(pid(b"OPERA123")) == "unknown (OPERA123)"


def test_every_azureus_code_is_two_chars() -> None:
    assert all(len(code) == 2 for code in AZUREUS_CLIENTS)


@given(st.binary(min_size=0, max_size=20))
def test_decode_never_raises(peer_id: bytes) -> None:
    assert isinstance(decode_client(peer_id), str)
