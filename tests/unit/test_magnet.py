"""Magnet URI parsing and building (minibt/magnet.py, BEP 9)."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import MagnetError
from minibt.magnet import MAX_PEERS, MAX_TRACKERS, Magnet, make_magnet, parse_magnet, parse_peer_address

IH = bytes.fromhex("c9e15763f722f23e98a29decdfae341b98d53056")
HEX = IH.hex()
B32 = base64.b32encode(IH).decode()


def test_hex_info_hash_any_case() -> None:
    assert parse_magnet(f"magnet:?xt=urn:btih:{HEX}").info_hash == IH
    assert parse_magnet(f"MAGNET:?XT=URN:BTIH:{HEX.upper()}").info_hash == IH


def test_base32_info_hash_any_case() -> None:
    assert len(B32) == 32
    assert parse_magnet(f"magnet:?xt=urn:btih:{B32}").info_hash == IH
    assert parse_magnet(f"magnet:?xt=urn:btih:{B32.lower()}").info_hash == IH


def test_full_magnet() -> None:
    m = parse_magnet(
        f"magnet:?xt=urn:btih:{HEX}&dn=Some+File%20%C3%A9.iso"
        "&tr=udp%3A%2F%2Ftracker.example%3A6969%2Fannounce&tr=http://t2.example/ann"
        "&tr=udp%3A%2F%2Ftracker.example%3A6969%2Fannounce"  # duplicate
        "&x.pe=10.0.0.1:6881&x.pe=%5B2001:DB8::1%5D:6882&x.pe=seed.example.org:51413"
        "&ws=http://web.seed/&xl=123&so=0-1"
    )
    assert m == Magnet(
        IH,
        "Some File é.iso",
        ("udp://tracker.example:6969/announce", "http://t2.example/ann"),
        (("10.0.0.1", 6881), ("2001:db8::1", 6882), ("seed.example.org", 51413)),
    )
    assert m.info_hash_hex == HEX


def test_numbered_tracker_keys_and_hybrid_v2() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btmh:1220{'ab' * 32}&xt=urn:btih:{HEX}&tr.1=http://a/&tr.2=http://b/")
    assert m.info_hash == IH and m.trackers == ("http://a/", "http://b/")


def test_same_hash_twice_is_fine() -> None:
    assert parse_magnet(f"magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{B32}").info_hash == IH


def test_caps_on_trackers_and_peers() -> None:
    trs = "".join(f"&tr=http://t{i}.example/" for i in range(MAX_TRACKERS + 20))
    pes = "".join(f"&x.pe=10.0.{i // 250}.{i % 250 + 1}:1" for i in range(MAX_PEERS + 20))
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}{trs}{pes}")
    assert len(m.trackers) == MAX_TRACKERS and len(m.peers) == MAX_PEERS
    assert m.trackers[0] == "http://t0.example/"


def test_unusable_trackers_are_skipped_and_long_names_cut() -> None:
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}&tr=&tr=http://x/%0Ay&tr=http://{'a' * 3000}/&dn={'n' * 5000}")
    assert m.trackers == () and m.name is not None and len(m.name) == 1024


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("http://example.com/?xt=urn:btih:" + "a" * 40, "magnet:?"),
        ("magnet:xt=urn:btih:" + "a" * 40, "magnet:?"),
        ("magnet:?dn=x&tr=http://t/", "no 'xt=urn:btih:'"),
        ("magnet:?xt=urn:ed2k:" + "a" * 32, "no 'xt=urn:btih:'"),
        ("magnet:?xt=urn:btmh:1220" + "a" * 64, "v2-only"),
        ("magnet:?xt=urn:btih:" + "a" * 39, "39 characters"),
        ("magnet:?xt=urn:btih:" + "a" * 41, "41 characters"),
        ("magnet:?xt=urn:btih:" + "g" * 40, "not hexadecimal"),
        ("magnet:?xt=urn:btih:" + "1" * 32, "not valid base32"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&xt=urn:btih:" + "b" * 40, "two different"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=1.2.3.4:0", "bad port"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=1.2.3.4:65536", "bad port"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=1.2.3.4:http", "bad port"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=1.2.3.4", "no port"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=2001:db8::1:80", "brackets"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=[2001:db8::zz]:80", "not an IPv6"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=bad_host!:80", "not an IP address or host name"),
        ("magnet:?xt=urn:btih:" + "a" * 40 + "&x.pe=999.1.1.1:80", "not an IP address or host name"),
        ("magnet:?" + "a" * 70000, "limit"),
    ],
)
def test_malformed_magnets_have_clear_errors(uri: str, words: str) -> None:
    with pytest.raises(MagnetError) as ei:
        parse_magnet(uri)
    assert words in str(ei.value)


def test_non_string_is_refused() -> None:
    with pytest.raises(MagnetError):
        parse_magnet(b"magnet:?xt=urn:btih:" + b"a" * 40)  # type: ignore[arg-type]


def test_peer_address_forms() -> None:
    assert parse_peer_address("[::ffff:1.2.3.4]:5") == ("::ffff:102:304", 5)
    assert parse_peer_address("Host.Example.:80") == ("host.example", 80)


def test_make_magnet_shape() -> None:
    uri = make_magnet(IH, "a b+c&d", ["udp://t:1/a?b=c"], [("2001:db8::1", 5), ("1.2.3.4", 6)])
    assert uri.startswith(f"magnet:?xt=urn:btih:{HEX}&dn=a%20b%2Bc%26d&tr=")
    assert "&x.pe=%5B2001%3Adb8%3A%3A1%5D%3A5" in uri
    with pytest.raises(ValueError):
        make_magnet(b"short")


names = st.none() | st.text(max_size=40)
trackers = st.lists(
    st.builds(
        "{}://{}:{}/{}".format,
        st.sampled_from(["http", "https", "udp"]),
        st.sampled_from(["t.example", "127.0.0.1", "[2001:db8::1]", "b\u00fccher.example"]),
        st.integers(1, 65535),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF), max_size=30).filter(
            lambda s: s.isprintable() and not any(c.isspace() for c in s)
        ),
    ),
    max_size=5,
    unique=True,
)
peers = st.lists(
    st.one_of(
        st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)).map(
            lambda t: ".".join(map(str, t))
        ),
        st.sampled_from(["2001:db8::1", "::1", "seed.example"]),
    ).flatmap(lambda h: st.tuples(st.just(h), st.integers(1, 65535))),
    max_size=5,
    unique=True,
)


@given(st.binary(min_size=20, max_size=20), names, trackers, peers)
@settings(max_examples=150, deadline=None)
def test_round_trip(ih: bytes, name: str | None, trs: list[str], pes: list[tuple[str, int]]) -> None:
    m = parse_magnet(make_magnet(ih, name, trs, pes))
    assert m == Magnet(ih, name, tuple(trs), tuple(pes))


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_garbage_only_raises_magnet_error(text: str) -> None:
    for uri in (text, "magnet:?" + text, f"magnet:?xt=urn:btih:{HEX}&" + text):
        try:
            parse_magnet(uri)
        except MagnetError:
            pass
