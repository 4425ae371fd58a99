"""urls.py: the one validator for tracker URLs and host:port addresses from outside."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import MagnetError, TrackerError
from minibt.httpclient import parse_http_url
from minibt.magnet import parse_magnet
from minibt.metainfo import parse_metainfo
from minibt.tracker import Announcer, HttpRequest
from minibt.urls import (
    MAX_URL_CHARS,
    TrackerUrl,
    canonical_host,
    is_tracker_url,
    parse_host_port,
    parse_tracker_url,
    resolve_redirect,
)

HEX = "ab" * 20

# Each of these ended a run with a traceback before the validator existed (fuzzing).
FUZZ_FOUND_URLS = [
    "http://[::1",  # urljoin/urlsplit: ValueError "Invalid IPv6 URL"
    "http://[zz]:80/",  # not an IPv6 literal
    "https://.0217.0.1:443/announce",  # UnicodeError from the IDNA codec (empty label) in ssl
    "udp://127.0.0.1:99999",  # OverflowError from sendto
    "udp://127.0.0.1:-1",
]

BAD_URLS = FUZZ_FOUND_URLS + [
    "",
    "tracker.example/announce",  # not absolute
    "ftp://t.example/",
    "wss://t.example/",
    "udp://t.example",  # udp:// has no default port
    "udp://t.example:/",
    "http://t.example:0/",
    "http://t.example:65536/",
    "http://t.example:+80/",
    "http://t.example:\u0668\u0660/",  # Arabic-Indic digits: int() would take them
    "http://t.example: 80/",
    "http://user:pw@t.example/",
    "http://[fe80::1%25eth0]/",  # zone id
    "http://[::1]x/",
    "http:///announce",
    "http://a..b/",
    "http://-a.example/",
    "http://a-.example/",
    "http://a b/",
    "http://t.example/a b",
    "http://t.example/\x00",
    "http://t.example/\r\nX-Injected: 1",
    "http://" + "a" * 64 + ".example/",  # label longer than 63
    "http://" + "a." * 130 + "com/",  # name longer than 253
    "http://t.example/" + "a" * MAX_URL_CHARS,
    "http://0x7f.1/",  # inet_aton forms that are not dotted quads
    "http://017.0.0.1/",
    "http://2130706433/",
    "http://1.2.3.4.5/",
    "http://256.0.0.1/",
    "http://a\u3002\u3002b/",  # ideographic full stops: empty label after IDNA
    "http://\udcff.example/",  # lone surrogate from errors="surrogateescape"
]

GOOD_URLS = [
    ("http://tracker.example/announce", TrackerUrl("http", "tracker.example", 80, "/announce")),
    ("HTTPS://Tracker.Example.:8443/a?b=1#frag", TrackerUrl("https", "tracker.example", 8443, "/a?b=1")),
    ("udp://127.0.0.1:6969/announce", TrackerUrl("udp", "127.0.0.1", 6969, "/announce")),
    ("udp://[2001:DB8::1]:6969", TrackerUrl("udp", "2001:db8::1", 6969, "")),
    ("http://b\u00fccher.example/", TrackerUrl("http", "xn--bcher-kva.example", 80, "/")),
    ("http://tracker_1.example:080/", TrackerUrl("http", "tracker_1.example", 80, "/")),
    ("http://t.example:/", TrackerUrl("http", "t.example", 80, "/")),
    ("http://t.example?x=1", TrackerUrl("http", "t.example", 80, "?x=1")),
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_tracker_url_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_tracker_url(url)
    assert not is_tracker_url(url)


@pytest.mark.parametrize(("url", "parsed"), GOOD_URLS)
def test_good_tracker_url_parsed(url: str, parsed: TrackerUrl) -> None:
    assert parse_tracker_url(url) == parsed
    assert is_tracker_url(url)


def test_scheme_restriction() -> None:
    assert parse_tracker_url("udp://t.example:1", ("udp",)).port == 1
    with pytest.raises(ValueError, match="scheme"):
        parse_tracker_url("http://t.example/", ("udp",))


@pytest.mark.parametrize("url", FUZZ_FOUND_URLS)
def test_http_codec_refuses_fuzz_urls_with_tracker_error(url: str) -> None:
    # parse_http_url shares the host/port checks; a udp:// URL is refused for its scheme.
    with pytest.raises(TrackerError):
        parse_http_url(url)


@pytest.mark.parametrize(
    ("text", "addr"),
    [
        ("10.0.0.1:6881", ("10.0.0.1", 6881)),
        ("[2001:DB8::1]:1", ("2001:db8::1", 1)),
        ("Seed.Example.:65535", ("seed.example", 65535)),
    ],
)
def test_host_port_forms(text: str, addr: tuple[str, int]) -> None:
    assert parse_host_port(text) == addr


@pytest.mark.parametrize(
    "text",
    ["1.2.3.4", "1.2.3.4:", "1.2.3.4:0", "1.2.3.4:-1", "1.2.3.4:99999", "1.2.3.4:" + "9" * 400, "[zz]:80",
     "[::1:80", "::1:80", "[::1]80", "a b:80", ":80", "999.1.1.1:80", "h\x00:80", "x" * 300 + ":80"],
)
def test_bad_host_port_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_canonical_host_idna_failure_is_value_error() -> None:
    with pytest.raises(ValueError, match="IDNA"):
        canonical_host("\u00e9" * 70)  # label too long for IDNA


@given(st.text(max_size=120))
@settings(max_examples=400, deadline=None)
def test_validator_total_on_any_text(text: str) -> None:
    for candidate in (text, "http://" + text, "udp://" + text, "https://[" + text):
        try:
            parsed = parse_tracker_url(candidate)
        except ValueError:
            continue
        # Whatever passes is safe for the consumers: ASCII host, port in range, parsable by urllib.
        assert parsed.host.isascii() and 0 < parsed.port <= 0xFFFF
        if parsed.scheme != "udp":
            assert parse_http_url(candidate).host == parsed.host
    try:
        host, port = parse_host_port(text)
    except ValueError:
        return
    assert host.isascii() and 0 < port <= 0xFFFF


# ---------------------------------------------------------------------- redirects


@pytest.mark.parametrize(
    "location",
    ["http://[::1", "http://[zz]:80/", "https://.0217.0.1:443/announce", "udp://127.0.0.1:6969",
     "http://t.example:99999/", "http://a b/", "//[::1"],
)
def test_bad_redirect_location_gives_tracker_error(location: str) -> None:
    req = HttpRequest("http://t.example/announce?x=1")
    req.receive_data(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())
    assert req.done and req.result()[0] == 302
    with pytest.raises(TrackerError, match="bad redirect"):
        _ = req.redirect_location
    with pytest.raises(ValueError):
        resolve_redirect("http://t.example/announce", location)


def test_relative_and_absolute_redirects_still_work() -> None:
    assert resolve_redirect("http://t.example/a/announce?x=1", "../b?y=2") == "http://t.example/b?y=2"
    assert resolve_redirect("https://t.example/a", "//u.example:81/c") == "https://u.example:81/c"
    assert resolve_redirect("http://t.example/a", "https://[::1]:8443/d") == "https://[::1]:8443/d"


# ---------------------------------------------------------------------- sources: .torrent, magnet, announcer


def _torrent_with(announce: bytes | None, tiers: list[list[bytes]] | None, url_list: list[bytes] | None) -> bytes:
    from minibt.bencode import encode

    info = {b"name": b"x", b"piece length": 16384, b"length": 5, b"pieces": b"\x00" * 20}
    top: dict[bytes, object] = {b"info": info}
    if announce is not None:
        top[b"announce"] = announce
    if tiers is not None:
        top[b"announce-list"] = tiers
    if url_list is not None:
        top[b"url-list"] = url_list
    return encode(top)


def test_metainfo_drops_invalid_trackers_and_web_seeds() -> None:
    bad = [u.encode("utf-8", "surrogatepass") for u in FUZZ_FOUND_URLS]
    data = _torrent_with(
        b"udp://127.0.0.1:99999",
        [bad[:2], [b"udp://127.0.0.1:6969", bad[3]], [bad[4], b"\xff\xfe"]],
        [b"http://[::1", b"udp://127.0.0.1:1/", b"http://seed.example/x", b"https://.0217.0.1/"],
    )
    m = parse_metainfo(data)
    assert m.announce_tiers == (("udp://127.0.0.1:6969",),)
    assert m.url_list == ("http://seed.example/x",)


@pytest.mark.parametrize("announce", [b"udp://127.0.0.1:99999", b"udp://127.0.0.1:-1", b"\xff\xfe"])
def test_metainfo_invalid_announce_is_dropped_not_fatal(announce: bytes) -> None:
    assert parse_metainfo(_torrent_with(announce, None, None)).announce_tiers == ()


def test_magnet_drops_invalid_tr_keeps_good_ones() -> None:
    import urllib.parse

    trs = "".join("&tr=" + urllib.parse.quote(u, safe="") for u in FUZZ_FOUND_URLS + ["udp://127.0.0.1:6969"])
    m = parse_magnet(f"magnet:?xt=urn:btih:{HEX}{trs}")
    assert m.trackers == ("udp://127.0.0.1:6969",)


@pytest.mark.parametrize("pe", ["1.2.3.4:99999", "1.2.3.4:-1", "[zz]:80", "[::1"])
def test_magnet_bad_x_pe_refused_with_magnet_error(pe: str) -> None:
    with pytest.raises(MagnetError, match="peer address"):
        parse_magnet(f"magnet:?xt=urn:btih:{HEX}&x.pe={pe}")


def test_announcer_skips_invalid_urls_from_any_source() -> None:
    a = Announcer([[u] for u in FUZZ_FOUND_URLS] + [["udp://127.0.0.1:6969"]], random.Random(1), now=0.0)
    assert a.tracker_count == 1
    assert [t["url"] for t in a.status()] == ["udp://127.0.0.1:6969"]


def test_cli_info_shows_torrent_without_bad_udp_trackers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from minibt.cli import main
    from minibt.metainfo import create_torrent

    payload = tmp_path / "p.bin"
    payload.write_bytes(b"x" * 40000)
    torrent = tmp_path / "p.torrent"
    torrent.write_bytes(create_torrent(str(payload), trackers=["udp://127.0.0.1:99999", "udp://127.0.0.1:-1",
                                                               "udp://127.0.0.1:6969/announce"]))
    assert main(["info", str(torrent)]) == 0
    out = capsys.readouterr().out
    assert "udp://127.0.0.1:6969/announce" in out and "99999" not in out and ":-1" not in out
