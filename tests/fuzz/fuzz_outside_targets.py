"""Fuzz targets for input that is not a peer's: .torrent files, magnets, trackers, the config file.

Contracts: parse_metainfo/metainfo_from_info raise only MetainfoError, parse_magnet only
MagnetError, tracker replies only TrackerError (HttpRequest and UdpTrackerClient never raise on
remote input at all), parse_config only ConfigError; no call over fuzzkit.TIME_LIMIT_S.
``tracker_urls`` checks what the trackers of a .torrent or magnet lead to downstream.
"""

from __future__ import annotations

import base64
import json
import math
import random
import ssl
import struct
import urllib.parse
from typing import Any

from fuzzkit import (
    EDGE_INTS,
    EDGE_U32,
    Finding,
    Target,
    bvalues,
    call,
    check,
    deep,
    feed_plans,
    mutated,
    register,
    split,
)
from hypothesis import strategies as st

from minibt import bencode
from minibt.configfile import parse_config
from minibt.errors import ConfigError, MagnetError, MetainfoError, TrackerError
from minibt.filenames import MAX_PATH_BYTES, FsRules, collision_key, disk_element_problem, map_paths
from minibt.magnet import make_magnet, parse_magnet
from minibt.metainfo import describe, metainfo_from_info, parse_metainfo
from minibt.tracker import (
    AnnounceParams,
    Announcer,
    HttpRequest,
    UdpTrackerClient,
    build_announce_url,
    parse_http_announce,
)

TLS = ssl.create_default_context()
PARAMS = AnnounceParams(info_hash=bytes(range(20)), peer_id=b"-MB0100-fuzzfuzzfuzz", port=6881, uploaded=0,
                        downloaded=0, left=1000, event="started", key=7)

# ------------------------------------------------------------------------------- tracker URLs

HOSTS = ("tracker.example", "127.0.0.1", "[::1]", "[zz]", "[::1", ".0217.0.1", "a..b", "xn--", "\u00e9t\u00e9.example",
         "", "[fe80::1%25eth0]", "-", "a" * 300, "1.2.3.4.5", "user@host", "h\u0000x")
PORTS = (None, 0, 1, 80, 443, 6969, 65535, 65536, 99999, -1, "", "x", "0x50", "+80", " 80", "1" * 30)
PATHS = ("/announce", "", "/a?b=c", "/announce?passkey=x%zz", "/" + "a" * 3000, "#frag", "/\r\nX: y")


@st.composite
def tracker_url(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(("http", "https", "udp", "udp", "HTTP", "wss", "")))
    host = draw(st.one_of(st.sampled_from(HOSTS), st.text(max_size=12)))
    port = draw(st.sampled_from(PORTS))
    path = draw(st.sampled_from(PATHS))
    url = f"{scheme}://{host}{'' if port is None else ':' + str(port)}{path}"
    if draw(st.integers(0, 4)) == 0:
        url = draw(mutated(url.encode("utf-8", "surrogatepass"))).decode("utf-8", "replace")
    return url


def _usable_trackers(name: str, tiers: tuple[tuple[str, ...], ...]) -> None:
    """What the session does with a torrent's trackers must not raise (Announcer, URL parsing)."""
    call(name, "Announcer", (), Announcer, tiers, random.Random(0), now=0.0)
    for url in (u for tier in tiers for u in tier):
        scheme = url.split(":", 1)[0].lower()
        if scheme in ("http", "https"):
            call(name, "http-url", TrackerError, lambda u=url: HttpRequest(build_announce_url(u, PARAMS), tls_context=TLS))
        elif scheme == "udp":
            try:
                port = urllib.parse.urlsplit(url).port
            except ValueError as e:
                raise Finding(name, "udp-url", f"{url!r}: {e}", e) from e
            check(name, "udp-url", port is None or 0 < port <= 0xFFFF, f"{url!r}: port {port}")


def _run_tracker_urls(url: str) -> None:
    name = "tracker_urls"
    uri = make_magnet(bytes(20), None, [url])
    m, err = call(name, "parse_magnet", MagnetError, parse_magnet, uri)
    if err is None:
        _usable_trackers(name, tuple((t,) for t in m.trackers))
    info = {b"length": 1, b"name": b"x", b"piece length": 16384, b"pieces": bytes(20)}
    raw = url.encode("utf-8", "surrogatepass")
    for top in ({b"announce": raw, b"info": info}, {b"announce-list": [[raw]], b"info": info}):
        meta, err = call(name, "parse_metainfo", MetainfoError, parse_metainfo, bencode.encode(top))
        if err is None:
            _usable_trackers(name, meta.announce_tiers)


register(Target(
    "tracker_urls", st.one_of(tracker_url(), st.text(max_size=40)), _run_tracker_urls,
    from_bytes=lambda d, plan: d.decode("utf-8", "replace"), to_bytes=lambda s: s.encode("utf-8", "surrogatepass"),
))

# ------------------------------------------------------------------------------- .torrent files

ELEMENTS = (b"a", b"file.bin", b"..", b".", b"", b"/", b"a/b", b"C:", b"con", b"x\x00y", b"\xff\xfe", b"dir\\x",
            b" trailing ", "\u00e9".encode(), b"a" * 300)


GOOD_ELEMENTS = (b"a", b"file.bin", b"dir", "\u00e9t\u00e9".encode(), b"Some Name (2024)", b".hidden")
good_element = st.one_of(st.sampled_from(GOOD_ELEMENTS), st.text("abcxyz019._- ", min_size=1, max_size=12).map(str.encode))
bad_element = st.one_of(st.sampled_from(ELEMENTS), st.binary(max_size=12))


@st.composite
def torrent_dict(draw: st.DrawFn) -> dict[bytes, Any]:
    """A valid .torrent dict; half the time one field is then replaced, deleted or made hostile."""
    plen = draw(st.sampled_from((16384, 32768, 1 << 18)))
    info: dict[bytes, Any] = {b"name": draw(good_element), b"piece length": plen}
    if draw(st.booleans()):
        files = []
        for i in range(draw(st.integers(1, 5))):
            path = [draw(good_element) for _ in range(draw(st.sampled_from((1, 1, 2, 3, 8))))]
            files.append({b"length": draw(st.integers(0, 100000)), b"path": path + [b"f%d" % i]})
        info[b"files"] = files
        total = sum(f[b"length"] for f in files)
        if total == 0:
            files[0][b"length"] = total = 1
    else:
        total = draw(st.integers(1, 300000))
        info[b"length"] = total
    info[b"pieces"] = draw(st.binary(min_size=20, max_size=20)) * (-(-total // plen))
    if draw(st.integers(0, 4)) == 0:
        info[b"private"] = 1
    top: dict[bytes, Any] = {b"info": info}
    if draw(st.booleans()):
        top[b"announce"] = draw(tracker_url()).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 2)) == 0:
        top[b"announce-list"] = [[draw(tracker_url()).encode("utf-8", "surrogatepass")] for _ in range(draw(st.integers(0, 3)))]
    if draw(st.integers(0, 3)) == 0:
        top[b"url-list"] = b"http://seed.example/"
    if draw(st.integers(0, 3)) == 0:
        top[b"comment"], top[b"created by"], top[b"creation date"] = b"fuzz", b"minibt", 1700000000
    if draw(st.booleans()):  # one field of the wrong type, missing or hostile
        files = info.get(b"files", [])
        kind = draw(st.integers(0, 4))
        if kind == 0 or not files:
            where = draw(st.sampled_from((top, info)))
            key = draw(st.sampled_from(sorted(where)))
            if draw(st.booleans()):
                where[key] = draw(st.one_of(bvalues, st.sampled_from(EDGE_INTS)))
            else:
                del where[key]
        elif kind == 1:
            info[b"name"] = draw(bad_element)
        elif kind == 2:
            f = draw(st.sampled_from(files))
            f[b"path"][draw(st.integers(0, len(f[b"path"]) - 1))] = draw(bad_element)
        elif kind == 3:
            draw(st.sampled_from(files))[b"length"] = draw(st.sampled_from(EDGE_INTS))
        else:
            draw(st.sampled_from(files))[b"attr"] = draw(st.sampled_from((b"p", b"l", b"x", b"ph")))
    return top


metainfo_inputs = st.one_of(
    torrent_dict().map(bencode.encode),
    torrent_dict().map(bencode.encode).flatmap(mutated),
    st.builds(lambda d: b"d4:info" + d + b"e", st.builds(deep, st.sampled_from((b"l", b"d")), st.integers(10, 3000))),
    st.binary(max_size=256),
)


def _path_limits(name: str, meta: Any) -> None:
    # What the OS can create (NAME_MAX 255 bytes, PATH_MAX 4096): the disk names minibt plans for an
    # accepted torrent, under either rule set, are safe single elements, fit, and never collide.
    for rules in FsRules:
        paths = [p for p in map_paths(meta.torrent_paths()[:200], rules) if p is not None]
        for p in paths:
            problems = [e for e in p if disk_element_problem(e) is not None]
            size = len("/".join(p).encode("utf-8", "surrogatepass"))
            check(name, "path-limits", not problems and size <= MAX_PATH_BYTES + 64,
                  f"{rules.name}: disk path of {len(p)} elements, {size} bytes, bad elements {problems[:2]!r}")
        keys = {tuple(collision_key(e, rules) for e in p) for p in paths}
        check(name, "path-limits", len(keys) == len(paths), f"{rules.name}: two files on one disk path")


def _run_metainfo(data: bytes) -> None:
    name = "metainfo"
    meta, err = call(name, "parse_metainfo", MetainfoError, parse_metainfo, data)
    call(name, "metainfo_from_info", MetainfoError, metainfo_from_info, data)
    if err is not None:
        return
    call(name, "describe", MetainfoError, describe, meta)
    for i in range(min(len(meta.files), 50)):
        call(name, "file_path", MetainfoError, meta.file_path, "/srv/minibt-fuzz", i)
    again, _ = call(name, "metainfo_from_info", MetainfoError, metainfo_from_info, meta.info_bytes,
                    announce_tiers=meta.announce_tiers)
    check(name, "info round trip", again is not None and again.info_hash == meta.info_hash and again.files == meta.files,
          "metainfo_from_info disagrees with parse_metainfo on the same info dict")
    _path_limits(name, meta)


register(Target("metainfo", metainfo_inputs, _run_metainfo, from_bytes=lambda d, plan: d, to_bytes=lambda d: d))

# ------------------------------------------------------------------------------- magnets

PEER_ADDRS = ("1.2.3.4:6881", "[::1]:6881", "[::1]:99999", "1.2.3.4:-1", "host:0", "[zz]:1", "h:65535", ":80",
              "1.2.3.4", "[::1]", "a" * 300 + ":1", "[fe80::1%eth0]:1", "1.2.3.4:1:2")


@st.composite
def magnet_uri(draw: st.DrawFn) -> str:
    ih = draw(st.binary(min_size=20, max_size=20))
    xt = draw(st.sampled_from((ih.hex(), ih.hex().upper(), base64.b32encode(ih).decode(), ih.hex()[:39], "zz" * 20, "")))
    fields = [("xt", "urn:btih:" + xt)] if draw(st.integers(0, 5)) else []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(("dn", "tr", "tr", "x.pe", "x.pe", "xt", "tr.1", "xt.2", "ws", "XT", "kt", "")))
        if key.lower().startswith("xt"):
            value = draw(st.sampled_from(("urn:btih:" + ih.hex(), "urn:btih:" + "0" * 40, "urn:btmh:1220" + "0" * 64, "urn:x")))
        elif key.startswith("tr"):
            value = draw(tracker_url())
        elif key == "x.pe":
            value = draw(st.sampled_from(PEER_ADDRS))
        else:
            value = draw(st.text(max_size=30))
        fields.append((key, value))
    quote = draw(st.booleans())
    uri = "magnet:?" + "&".join(f"{k}={urllib.parse.quote(v, safe='') if quote else v}" for k, v in fields)
    if draw(st.integers(0, 3)) == 0:
        uri = draw(mutated(uri.encode("utf-8", "surrogatepass"))).decode("utf-8", "replace")
    return uri


def _run_magnet(uri: str) -> None:
    name = "magnet"
    m, err = call(name, "parse_magnet", MagnetError, parse_magnet, uri)
    if err is not None:
        return
    again, err = call(name, "round trip", MagnetError, parse_magnet, make_magnet(m.info_hash, m.name, m.trackers, m.peers))
    check(name, "round trip", err is None and again.info_hash == m.info_hash and again.trackers == m.trackers,
          f"make_magnet output does not parse back the same: {err!r}")


register(Target(
    "magnet", st.one_of(magnet_uri(), st.text(max_size=60).map(lambda s: "magnet:?" + s)), _run_magnet,
    from_bytes=lambda d, plan: d.decode("utf-8", "replace"), to_bytes=lambda s: s.encode("utf-8", "surrogatepass"),
))

# ------------------------------------------------------------------------------- HTTP tracker replies


@st.composite
def tracker_reply(draw: st.DrawFn) -> bytes:
    """A valid BEP 3/7/23 reply; a third of the time one field is then replaced by a random value."""
    d: dict[bytes, Any] = {b"interval": draw(st.integers(0, 7200))}
    if draw(st.integers(0, 9)) == 0:
        d[b"failure reason"] = draw(st.binary(max_size=40))
    if draw(st.booleans()):
        d[b"peers"] = draw(st.binary(max_size=60).map(lambda b: b[: len(b) // 6 * 6]))
    else:
        d[b"peers"] = draw(st.lists(st.fixed_dictionaries({
            b"ip": st.sampled_from((b"1.2.3.4", b"::1", b"host", b"\xff", b"")), b"port": st.integers(0, 70000)}), max_size=5))
    for key, strat in ((b"peers6", st.integers(0, 5).map(lambda n: bytes(range(18)) * n)),
                       (b"min interval", st.integers(0, 7200)), (b"complete", st.integers(0, 10**6)),
                       (b"incomplete", st.integers(0, 10**6)), (b"tracker id", st.binary(max_size=300)),
                       (b"warning message", st.binary(max_size=40))):
        if draw(st.booleans()):
            d[key] = draw(strat)
    if draw(st.integers(0, 2)) == 0:
        d[draw(st.sampled_from(sorted(d)))] = draw(st.one_of(bvalues, st.sampled_from(EDGE_INTS)))
    body = bencode.encode(d)
    if draw(st.integers(0, 4)) == 0:
        body = draw(mutated(body))
    return body


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos = [], 0
    for n in sizes:
        out.append(b"%x\r\n" % n + body[pos : pos + n] + b"\r\n")
        pos += n
    out.append(b"%x\r\n" % (len(body) - pos) + body[pos:] + b"\r\n" if pos < len(body) else b"")
    return b"".join(out) + b"0\r\n\r\n"


@st.composite
def http_response(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from((200, 200, 200, 200, 200, 200, 204, 301, 302, 303, 307, 308, 100, 101, 404, 500, 999, 0)))
    body = draw(st.one_of(tracker_reply(), tracker_reply(), st.binary(max_size=64)))
    headers = [f"X-Fuzz: {draw(st.integers(0, 9))}".encode()]
    framing = draw(st.sampled_from((0, 0, 1, 1, 2, 3, 4)))
    if framing == 0:
        headers.append(b"Content-Length: %d" % len(body))
    elif framing == 1:
        headers.append(b"Transfer-Encoding: chunked")
        body = _chunked(body, draw(st.lists(st.integers(1, 20), max_size=4)))
    elif framing == 2:
        headers.append(b"Content-Length: " + str(draw(st.sampled_from(EDGE_INTS + EDGE_U32))).encode())
    elif framing == 3:
        headers += [b"Content-Length: %d" % len(body), b"Content-Length: %d" % (len(body) + 1)]
    if status in (301, 302, 303, 307, 308) or draw(st.integers(0, 9)) == 0:
        loc = draw(st.one_of(tracker_url(), st.sampled_from(("/relative", "//other.example/a", "", "?x=1"))))
        headers.append(b"Location: " + loc.encode("utf-8", "surrogatepass"))
    if draw(st.integers(0, 9)) == 0:
        headers.append(draw(st.sampled_from((b"Content-Encoding: gzip", b"Transfer-Encoding: gzip, chunked",
                                             b"Bad Header", b": empty", b"X:\x00"))))
    head = b"HTTP/1.1 %d Fuzz\r\n" % status + b"\r\n".join(headers) + b"\r\n\r\n"
    if draw(st.integers(0, 9)) == 0:
        head = b"HTTP/1.1 100 Continue\r\n\r\n" + head
    resp = head + body
    if draw(st.integers(0, 4)) == 0:
        resp = draw(mutated(resp))
    return resp


def _run_http_tracker(inp: tuple[bool, bytes, tuple[int, ...], bool]) -> None:
    name = "http_tracker"
    https, resp, plan, eof = inp
    url = build_announce_url(("https" if https else "http") + "://tracker.example/announce", PARAMS)
    req = HttpRequest(url, tls_context=TLS)
    req.data_to_send()
    for chunk in split(resp, plan):
        call(name, "receive_data", (), req.receive_data, chunk)
    if eof:
        call(name, "eof", (), req.eof)
    call(name, "state", (), lambda: (req.done, req.error, req.status))
    loc, _ = call(name, "redirect", TrackerError, lambda: req.redirect_location)
    if loc is not None:
        call(name, "follow", TrackerError, HttpRequest, loc, tls_context=TLS)
        return
    if req.done:
        res, err = call(name, "result", TrackerError, req.result)
        if err is None and res[0] == 200:
            call(name, "parse_http_announce", TrackerError, parse_http_announce, res[1])


register(Target(
    "http_tracker", st.tuples(st.sampled_from((False, False, False, True)), http_response(), feed_plans, st.booleans()),
    _run_http_tracker,
    from_bytes=lambda d, plan: (False, d, plan, True), to_bytes=lambda inp: None if inp[0] or not inp[3] else inp[1],
))


def _run_tracker_body(body: bytes) -> None:
    call("tracker_body", "parse_http_announce", TrackerError, parse_http_announce, body)


register(Target(
    "tracker_body", st.one_of(tracker_reply(), st.builds(deep, st.sampled_from((b"l", b"d")), st.integers(10, 5000)),
                              st.binary(max_size=128)),
    _run_tracker_body, from_bytes=lambda d, plan: d, to_bytes=lambda d: d,
))

# ------------------------------------------------------------------------------- UDP tracker replies (BEP 15)

udp_ops = st.one_of(
    st.tuples(st.just("reply"), st.sampled_from((0, 1, 3, 0, 1, 2, 2**32 - 1)), st.integers(0, 60),
              st.sampled_from((0, 0, 0, -1, 1, 5)), st.binary(max_size=6)),
    st.tuples(st.just("advance"), st.sampled_from((1.0, 15.0, 30.0, 61.0, 4000.0))),
    st.tuples(st.just("junk"), st.binary(max_size=40)),
    st.tuples(st.just("announce")),
)


def _run_udp_tracker(inp: tuple[int, bool, list[tuple[Any, ...]]]) -> None:
    name = "udp_tracker"
    seed_, ipv6, ops = inp
    client = UdpTrackerClient(random.Random(seed_), ipv6=ipv6)
    now = 1000.0
    client.announce(PARAMS, now=now)
    sent = client.datagrams_to_send(now=now)
    for op in ops:
        if op[0] == "reply" and sent:
            _, action, npeers, skew, junk = op
            txid = sent[-1][12:16]
            entry = 18 if ipv6 else 6
            if action == 0:
                body = struct.pack(">Q", 0x1234)
            elif action == 1:
                body = struct.pack(">III", 1800, 3, 4) + bytes(max(0, npeers * entry + skew))
            else:
                body = junk
            dgram = struct.pack(">I", action) + txid + body
            call(name, "receive_datagram", TrackerError, client.receive_datagram, dgram, now=now)
        elif op[0] == "advance":
            now += op[1]
            call(name, "handle_timeout", TrackerError, client.handle_timeout, now=now)
        elif op[0] == "junk":
            call(name, "receive_datagram", TrackerError, client.receive_datagram, op[1], now=now)
        else:
            call(name, "announce", TrackerError, client.announce, PARAMS, now=now)
        out, _ = call(name, "datagrams_to_send", (), client.datagrams_to_send, now=now)
        sent = out or sent


register(Target(
    "udp_tracker", st.tuples(st.integers(0, 2**16), st.booleans(), st.lists(udp_ops, max_size=12)), _run_udp_tracker,
))

# ------------------------------------------------------------------------------- the TOML runner config

DURATIONS = ("30s", "90", "1h30m", "15m", "1d", "0", "", "-1", "1.5h", "2x", "1" * 15 + "!", " ", "1e9", "nan", "inf")
SIZES = ("96MiB", "512k", "1G", "0", "1000", "-1", "1.5MiB", "", "1e400", "0x10", "2MB/s", "kib", "9" * 15)
toml_scalars = st.one_of(
    st.sampled_from(DURATIONS + SIZES), st.text(max_size=12), st.integers(-(2**63), 2**63 - 1), st.sampled_from(EDGE_INTS[:9]),
    st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
)
toml_values = st.one_of(toml_scalars, st.lists(toml_scalars, max_size=3))
CLIENT_KEYS = ("listen_port", "bind", "state_dir", "download_dir", "max_connections", "max_peers_per_torrent",
               "upload_limit", "download_limit", "memory_budget", "transports", "watch_dir", "watch_interval",
               "status_interval", "resume_interval", "disk_retry_interval", "on_complete", "watch_seed_ratio",
               "watch_seed_time", "bogus")
SCHEDULE_KEYS = ("download_windows", "alt_rate_windows", "alt_upload_limit", "alt_download_limit")
TORRENT_KEYS = ("source", "dir", "mode", "files", "seed_ratio", "seed_time", "peers", "on_complete")
WINDOWS = ("01:00-07:00", "24:00-01:00", "00:00-24:00", "7-8", "25:00-01:00", "01:00-01:00", "x")


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    return "[" + ", ".join(_toml(x) for x in v) + "]"


GOOD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "listen_port": st.integers(0, 65535), "bind": st.sampled_from(("0.0.0.0", "::", "127.0.0.1")),
    "state_dir": st.just("state"), "download_dir": st.just("dl"), "max_connections": st.integers(1, 10000),
    "max_peers_per_torrent": st.integers(1, 1000), "upload_limit": st.sampled_from(("0", "500KiB", 1000, 0)),
    "download_limit": st.sampled_from(("2MiB", "300kB/s", 0)), "memory_budget": st.sampled_from(("96MiB", "1G")),
    "transports": st.sampled_from((["tcp", "utp"], ["utp"], ["tcp"])), "watch_dir": st.just(""),
    "watch_interval": st.sampled_from(DURATIONS[:5]), "status_interval": st.sampled_from(("5s", 5, 2.5)),
    "resume_interval": st.just("30s"), "disk_retry_interval": st.just("1m"), "on_complete": st.just(["/bin/true"]),
    "level": st.sampled_from(("info", "DEBUG", "warning")), "file": st.just(""),
    "download_windows": st.lists(st.sampled_from(WINDOWS[:3]), max_size=2),
    "alt_rate_windows": st.lists(st.sampled_from(WINDOWS[:3]), max_size=2),
    "alt_upload_limit": st.just("200KiB"), "alt_download_limit": st.just(0),
    "mode": st.sampled_from(("download", "seed")), "dir": st.just("data"), "seed_ratio": st.sampled_from((0, 2.0)),
    "seed_time": st.sampled_from(("7d", 0, "48h")), "peers": st.just(["1.2.3.4:6881"]),
}


@st.composite
def config_text(draw: st.DrawFn) -> str:
    def value(key: str) -> Any:
        good = GOOD_VALUES.get(key)
        if good is not None and draw(st.integers(0, 2)):
            return draw(good)
        if key.endswith("windows"):
            return draw(st.lists(st.sampled_from(WINDOWS), max_size=3))
        if key == "transports":
            return draw(st.lists(st.sampled_from(("tcp", "utp", "x", "")), max_size=3))
        if key == "peers":
            return draw(st.lists(st.sampled_from(PEER_ADDRS + ("h:" + "9" * 5000,)), max_size=2))
        if key == "source":
            return draw(st.one_of(magnet_uri(), st.sampled_from(("x.torrent", "", "/nonexistent.torrent"))))
        return draw(toml_values)

    lines = []
    for table, keys in (("client", CLIENT_KEYS), ("log", ("level", "file", "max_size")), ("schedule", SCHEDULE_KEYS)):
        if draw(st.booleans()):
            lines.append(f"[{table}]")
            lines += [f"{k} = {_toml(value(k))}" for k in draw(st.lists(st.sampled_from(keys), max_size=5, unique=True))]
    for _ in range(draw(st.integers(0, 2))):
        lines.append("[[torrent]]")
        lines += [f"{k} = {_toml(value(k))}" for k in draw(st.lists(st.sampled_from(TORRENT_KEYS), max_size=4, unique=True))]
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 5)) == 0:
        text = draw(mutated(text.encode("utf-8", "surrogatepass"))).decode("utf-8", "replace")
    return text


def _run_config(text: str) -> None:
    call("config", "parse_config", ConfigError, parse_config, text, "fuzz.toml", base_dir="/nonexistent/minibt-fuzz")


register(Target(
    "config", st.one_of(config_text(), st.text(max_size=80)), _run_config,
    from_bytes=lambda d, plan: d.decode("utf-8", "replace"), to_bytes=lambda s: s.encode("utf-8", "surrogatepass"),
))
