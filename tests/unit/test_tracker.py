from __future__ import annotations

import datetime
import ipaddress
import random
import ssl
from pathlib import Path

import bencode2
import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import TrackerError
from minibt.tracker import (
    MAX_PEERS_PER_ANNOUNCE,
    STOP_TIMEOUT_S,
    AnnounceDone,
    AnnounceFailed,
    AnnounceJob,
    AnnounceParams,
    Announcer,
    AnnounceResult,
    HttpRequest,
    UdpPhase,
    UdpTrackerClient,
    build_announce_url,
    parse_http_announce,
)

INFO_HASH = bytes.fromhex("123456789abcdef123456789abcdef123456789a")
PEER_ID = b"-MB0100-a b~c.d_e/f+"


def params(**kw: object) -> AnnounceParams:
    base: dict[str, object] = dict(
        info_hash=INFO_HASH, peer_id=PEER_ID, port=6881, uploaded=10, downloaded=20, left=30,
        event="started", key=0xDEADBEEF,
    )
    base.update(kw)
    return AnnounceParams(**base)  # type: ignore[arg-type]


# -- URL building ------------------------------------------------------------------------------

def test_build_announce_url_hand_computed() -> None:
    url = build_announce_url("http://t.example:6969/announce", params())
    assert url == (
        "http://t.example:6969/announce?info_hash=%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A"
        "&peer_id=-MB0100-a%20b~c.d_e%2Ff%2B&port=6881&uploaded=10&downloaded=20&left=30"
        "&event=started&numwant=50&key=DEADBEEF&compact=1&no_peer_id=1"
    )


def test_build_announce_url_keeps_existing_query_and_tracker_id() -> None:
    p = params(event="", key=5, numwant=-1, tracker_id=b"id&1", compact=False)
    url = build_announce_url("https://t.example/a?passkey=xyz#frag", p)
    assert url.startswith("https://t.example/a?passkey=xyz&info_hash=")
    assert "event=" not in url and "numwant=" not in url
    assert url.endswith("&key=00000005&compact=0&no_peer_id=1&trackerid=id%261")
    assert build_announce_url("http://t/a?", p).startswith("http://t/a?info_hash=")


@pytest.mark.parametrize(
    "kw", [{"info_hash": b"x" * 19}, {"peer_id": b""}, {"port": 70000}, {"left": -1},
           {"event": "paused"}, {"key": 2**32}, {"numwant": -2}],
)
def test_params_validation(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        params(**kw)


# -- HTTP response parsing -------------------------------------------------------------------

def compact4(*peers: tuple[str, int]) -> bytes:
    return b"".join(ipaddress.IPv4Address(ip).packed + port.to_bytes(2, "big") for ip, port in peers)


def compact6(*peers: tuple[str, int]) -> bytes:
    return b"".join(ipaddress.IPv6Address(ip).packed + port.to_bytes(2, "big") for ip, port in peers)


def test_parse_compact_peers_and_stats() -> None:
    body = bencode2.bencode({
        b"interval": 900, b"min interval": 120, b"complete": 3, b"incomplete": 7, b"tracker id": b"tid",
        b"peers": compact4(("10.0.0.1", 6881), ("192.168.1.255", 65535), ("1.2.3.4", 0)),
    })
    r = parse_http_announce(body)
    assert r == AnnounceResult(
        interval=900, min_interval=120, peers=(("10.0.0.1", 6881), ("192.168.1.255", 65535)),
        complete=3, incomplete=7, tracker_id=b"tid", warning=None, failure=None,
    )


def test_parse_dict_peers_skips_unusable_entries() -> None:
    body = bencode2.bencode({b"interval": 1800, b"peers": [
        {b"ip": b"10.0.0.2", b"peer id": b"x" * 20, b"port": 51413},
        {b"ip": b"2001:db8:0:0::1", b"port": 6881},
        {b"ip": b"tracker.example", b"port": 6881},  # DNS names are not dialled
        {b"ip": b"10.0.0.3", b"port": 0},
        {b"ip": b"10.0.0.4", b"port": 70000},
        {b"port": 1},
    ]})
    assert parse_http_announce(body).peers == (("10.0.0.2", 51413), ("2001:db8::1", 6881))


def test_parse_peers6_joins_ipv4() -> None:
    body = bencode2.bencode({
        b"interval": 60, b"peers": compact4(("8.8.8.8", 1)),
        b"peers6": compact6(("2001:db8::2", 6881), ("::ffff:1.2.3.4", 80), ("fe80::1", 0)),
    })
    assert parse_http_announce(body).peers == (("8.8.8.8", 1), ("2001:db8::2", 6881), ("::ffff:102:304", 80))


def test_parse_failure_reason_is_a_result() -> None:
    r = parse_http_announce(b"d14:failure reason17:torrent not founde")
    assert r.failure == "torrent not found" and r.peers == ()


def test_parse_warning_and_control_characters_cleaned() -> None:
    r = parse_http_announce(bencode2.bencode({b"peers": b"", b"warning message": b"slow\x1b[31m\ndown"}))
    assert r.warning == "slow [31m down"
    assert r.failure is None


@pytest.mark.parametrize(("raw", "expected"), [(None, 1800), (0, 30), (-5, 30), (29, 30), (3600, 3600), (10**9, 7200)])
def test_parse_interval_default_and_clamp(raw: int | None, expected: int) -> None:
    d: dict[bytes, object] = {b"peers": b""}
    if raw is not None:
        d[b"interval"] = raw
    assert parse_http_announce(bencode2.bencode(d)).interval == expected


def test_parse_caps_peer_count_and_dedupes() -> None:
    many = b"".join(i.to_bytes(4, "big") + b"\x1a\xe1" for i in range(1, 2000))
    r = parse_http_announce(bencode2.bencode({b"peers": compact4(("1.1.1.1", 5)) * 3 + many}))
    assert len(r.peers) == MAX_PEERS_PER_ANNOUNCE
    assert r.peers[:2] == (("1.1.1.1", 5), ("0.0.0.1", 6881))


@pytest.mark.parametrize(
    "body",
    [
        b"", b"le", b"i5e", b"d5:peers7:1234567e", b"d6:peers61:xe", b"d5:peersi1ee",
        b"d8:intervali1e5:peersi3ee", b"d8:interval2:10e", b"d14:failure reasoni1ee",
        b"d5:peersli1eee", b"d6:peers6i0ee", b"d5:peers0:e trailing",
    ],
)
def test_parse_malformed_raises_tracker_error(body: bytes) -> None:
    with pytest.raises(TrackerError):
        parse_http_announce(body)


def test_parse_refuses_oversized_body() -> None:
    with pytest.raises(TrackerError, match="exceeds"):
        parse_http_announce(b"d5:peers" + b"0" * (3 * 1024 * 1024))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_parse_garbage_only_tracker_error(body: bytes) -> None:
    try:
        parse_http_announce(body)
    except TrackerError:
        pass


bvalues = st.recursive(
    st.integers(min_value=-(2**40), max_value=2**40) | st.binary(max_size=40),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.binary(max_size=12), kids, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from([b"interval", b"min interval", b"peers", b"peers6", b"failure reason",
                        b"warning message", b"complete", b"incomplete", b"tracker id", b"ip", b"port"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(keys, bvalues, max_size=6))
def test_parse_structured_garbage_only_tracker_error(d: dict[bytes, object]) -> None:
    try:
        r = parse_http_announce(bencode2.bencode(d))
    except TrackerError:
        return
    assert 30 <= r.interval <= 7200 and len(r.peers) <= MAX_PEERS_PER_ANNOUNCE
    assert all(0 < port < 65536 for _, port in r.peers)


# -- HttpRequest -------------------------------------------------------------------------------

def test_http_request_plain_round_trip() -> None:
    req = HttpRequest("http://t.example:6969/announce?info_hash=%12")
    assert (req.host, req.port, req.use_tls) == ("t.example", 6969, False)
    sent = req.data_to_send()
    assert sent.startswith(b"GET /announce?info_hash=%12 HTTP/1.1\r\nHost: t.example:6969\r\n")
    assert b"Connection: close\r\n" in sent and b"Accept-Encoding: identity\r\n" in sent
    assert req.data_to_send() == b""
    body = b"d8:intervali900e5:peers6:\n\0\0\x01\x1a\xe1e"
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    for i in range(len(resp)):
        assert not req.done
        req.receive_data(resp[i : i + 1])
    assert req.done
    status, got = req.result()
    assert status == 200 and parse_http_announce(got).peers == (("10.0.0.1", 6881),)


def test_http_request_redirect_location_resolved() -> None:
    req = HttpRequest("https://t.example/announce?x=1", tls_context=ssl.create_default_context())
    assert (req.port, req.use_tls) == (443, True)
    plain = HttpRequest("http://t.example/announce?x=1")
    plain.receive_data(b"HTTP/1.1 302 Found\r\nLocation: /new/announce?y=2\r\nContent-Length: 0\r\n\r\n")
    assert plain.redirect_location == "http://t.example/new/announce?y=2"
    assert plain.result() == (302, b"")
    ok = HttpRequest("http://t.example/")
    ok.receive_data(b"HTTP/1.1 200 OK\r\nLocation: /x\r\n\r\n")
    assert ok.redirect_location is None


def test_http_request_bad_status_line_and_eof() -> None:
    req = HttpRequest("http://t.example/")
    req.receive_data(b"SSH-2.0-OpenSSH\r\n\r\n")
    assert req.done and req.error is not None
    with pytest.raises(TrackerError):
        req.result()
    cut = HttpRequest("http://t.example/")
    cut.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    cut.eof()
    with pytest.raises(TrackerError):
        cut.result()


@pytest.mark.parametrize("url", ["udp://t.example:80/announce", "wss://t.example/", "ftp://x/"])
def test_http_request_refuses_other_schemes(url: str) -> None:
    with pytest.raises(TrackerError):
        HttpRequest(url)


@pytest.fixture(scope="module")
def tls_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(client context trusting the cert, server context) for a self-signed 'localhost' cert."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(start).not_valid_after(start + datetime.timedelta(days=36500))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d: Path = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(d / "cert.pem", d / "key.pem")
    client = ssl.create_default_context(cafile=str(d / "cert.pem"))
    return client, server


def run_tls_server(req: HttpRequest, server_ctx: ssl.SSLContext, response: bytes, *, close: bool) -> bytes:
    """Drive an in-memory TLS server against ``req``; returns the plaintext request it got."""
    sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
    srv = server_ctx.wrap_bio(sin, sout, server_side=True)
    got, handshaken, answered = b"", False, False
    for _ in range(50):
        sin.write(req.data_to_send())
        try:
            if not handshaken:
                srv.do_handshake()
                handshaken = True
            if not answered:
                got += srv.read(65536)
                if b"\r\n\r\n" in got:
                    srv.write(response)
                    answered = True
                    if close:
                        srv.unwrap()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            break
        out = sout.read()
        if out:
            req.receive_data(out)
        if req.done:
            break
    return got


@pytest.mark.parametrize("close", [False, True], ids=["content-length", "close-notify"])
def test_https_through_memory_bio_pair(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext], close: bool) -> None:
    client_ctx, server_ctx = tls_pair
    req = HttpRequest("https://localhost:8443/announce?a=1", tls_context=client_ctx)
    body = b"d8:intervali900e5:peers0:e"
    head = b"HTTP/1.1 200 OK\r\n" + (b"" if close else b"Content-Length: %d\r\n" % len(body))
    got = run_tls_server(req, server_ctx, head + b"\r\n" + body, close=close)
    assert got.startswith(b"GET /announce?a=1 HTTP/1.1\r\nHost: localhost:8443\r\n")
    assert req.done
    assert req.result() == (200, body)


def test_https_wrong_host_fails_verification(tls_pair: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    client_ctx, server_ctx = tls_pair
    req = HttpRequest("https://127.0.0.1/announce", tls_context=client_ctx)
    run_tls_server(req, server_ctx, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", close=False)
    assert req.done
    with pytest.raises(TrackerError, match="TLS"):
        req.result()


def test_https_garbage_from_server_is_tracker_error() -> None:
    req = HttpRequest("https://t.example/", tls_context=ssl.create_default_context())
    assert req.data_to_send()[:1] == b"\x16"  # a TLS handshake record: the ClientHello
    req.receive_data(b"HTTP/1.1 200 OK\r\n\r\n")
    req.eof()
    assert req.done
    with pytest.raises(TrackerError):
        req.result()


# -- UDP tracker (BEP 15) ----------------------------------------------------------------------

MAGIC = bytes.fromhex("0000041727101980")
CONN_ID = 0x1122334455667788


def connect_reply(txid: bytes, conn_id: int = CONN_ID) -> bytes:
    return b"\0\0\0\0" + txid + conn_id.to_bytes(8, "big")


def announce_reply(txid: bytes, peers: bytes, interval: int = 1200) -> bytes:
    return b"\0\0\0\x01" + txid + interval.to_bytes(4, "big") + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") + peers


def one(datagrams: list[bytes]) -> bytes:
    assert len(datagrams) == 1
    return datagrams[0]


def connect(client: UdpTrackerClient, clock: FakeClock, p: AnnounceParams | None = None) -> bytes:
    """Start an announce, answer the connect; returns the announce datagram."""
    client.announce(p or params(), now=clock.now())
    req = one(client.datagrams_to_send(now=clock.now()))
    assert len(req) == 16
    assert client.receive_datagram(connect_reply(req[12:16]), now=clock.now()) == []
    return one(client.datagrams_to_send(now=clock.now()))


def test_udp_connect_and_announce_exact_layout(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    p = params(uploaded=2**40, downloaded=7, left=123456789, event="completed", key=0xCAFEBABE, numwant=80)
    client.announce(p, now=clock.now())
    req = one(client.datagrams_to_send(now=clock.now()))
    assert req[:12] == MAGIC + b"\0\0\0\0" and len(req) == 16
    client.receive_datagram(connect_reply(req[12:16]), now=clock.now())
    ann = one(client.datagrams_to_send(now=clock.now()))
    txid = ann[12:16]
    assert txid != req[12:16]
    assert ann == (
        CONN_ID.to_bytes(8, "big") + b"\0\0\0\x01" + txid + INFO_HASH + PEER_ID
        + (7).to_bytes(8, "big") + (123456789).to_bytes(8, "big") + (2**40).to_bytes(8, "big")
        + b"\0\0\0\x01" + b"\0\0\0\0" + bytes.fromhex("cafebabe") + (80).to_bytes(4, "big")
        + (6881).to_bytes(2, "big")
    )
    assert len(ann) == 98


@pytest.mark.parametrize(("event", "code", "numwant", "wire"), [
    ("", 0, -1, b"\xff\xff\xff\xff"), ("started", 2, 0, b"\0\0\0\0"), ("stopped", 3, 50, b"\0\0\0\x32")])
def test_udp_event_codes_and_numwant(rng: random.Random, clock: FakeClock, event: str, code: int,
                                     numwant: int, wire: bytes) -> None:
    ann = connect(UdpTrackerClient(rng), clock, params(event=event, numwant=numwant))
    assert ann[80:84] == code.to_bytes(4, "big")
    assert ann[92:96] == wire


def test_udp_announce_done_with_peers(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    ann = connect(client, clock)
    peers = compact4(("10.1.2.3", 6881), ("10.9.9.9", 0), ("127.0.0.1", 1))
    events = client.receive_datagram(announce_reply(ann[12:16], peers, interval=5), now=clock.now())
    assert events == [AnnounceDone(AnnounceResult(
        interval=30, min_interval=None, peers=(("10.1.2.3", 6881), ("127.0.0.1", 1)), complete=2, incomplete=5))]
    assert client.phase is UdpPhase.IDLE and client.next_deadline() is None
    assert client.stats()["announces_done"] == 1


def test_udp_ipv6_tracker_parses_18_byte_peers(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng, ipv6=True)
    ann = connect(client, clock)
    events = client.receive_datagram(announce_reply(ann[12:16], compact6(("2001:db8::7", 51413))), now=clock.now())
    assert isinstance(events[0], AnnounceDone)
    assert events[0].result.peers == (("2001:db8::7", 51413),)


def test_udp_unknown_txid_ignored_and_counted(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    client.announce(params(), now=clock.now())
    req = one(client.datagrams_to_send(now=clock.now()))
    wrong = bytes(b ^ 0xFF for b in req[12:16])
    assert client.receive_datagram(connect_reply(wrong), now=clock.now()) == []
    assert client.receive_datagram(b"\0\0", now=clock.now()) == []
    assert client.datagrams_to_send(now=clock.now()) == []
    assert client.phase is UdpPhase.CONNECTING
    assert client.stats()["unknown_txid"] == 2
    assert not client.expects_datagram(connect_reply(wrong))
    assert client.expects_datagram(connect_reply(req[12:16]))
    client.receive_datagram(connect_reply(req[12:16]), now=clock.now())
    assert client.phase is UdpPhase.ANNOUNCING


def test_udp_error_action_fails_announce(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    ann = connect(client, clock)
    events = client.receive_datagram(b"\0\0\0\x03" + ann[12:16] + b"unregistered torrent", now=clock.now())
    assert events == [AnnounceFailed("unregistered torrent")]
    assert client.stats()["errors"] == 1
    # the connection id is dropped after an error: the next announce connects again
    client.announce(params(), now=clock.now())
    assert len(one(client.datagrams_to_send(now=clock.now()))) == 16


@pytest.mark.parametrize("reply", [
    lambda t: b"\0\0\0\x01" + t + b"\0\0\0\x05",  # short announce reply
    lambda t: b"\0\0\0\x02" + t + b"\0" * 12,  # wrong action
    lambda t: announce_reply(t, b"\x01\x02\x03\x04\x05"),  # partial peer entry
])
def test_udp_malformed_reply_fails(rng: random.Random, clock: FakeClock, reply: object) -> None:
    client = UdpTrackerClient(rng)
    ann = connect(client, clock)
    events = client.receive_datagram(reply(ann[12:16]), now=clock.now())  # type: ignore[operator]
    assert len(events) == 1 and isinstance(events[0], AnnounceFailed)
    assert events[0].message.startswith("malformed reply")


def test_udp_retransmit_schedule_then_timeout(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    client.announce(params(), now=clock.now())
    first = one(client.datagrams_to_send(now=clock.now()))
    waits: list[float] = []
    events: list[object] = []
    while not events:
        deadline = client.next_deadline()
        assert deadline is not None
        waits.append(deadline - clock.now())
        clock.jump_to(deadline - 0.001)
        assert client.handle_timeout(now=clock.now()) == []
        clock.jump_to(deadline)
        events = list(client.handle_timeout(now=clock.now()))
        if not events:
            assert one(client.datagrams_to_send(now=clock.now())) == first  # same txid, same bytes
    assert waits == [15.0 * 2**n for n in range(9)]  # BEP 15: 15 * 2**n, n = 0..8
    assert events == [AnnounceFailed("timeout")]
    assert client.next_deadline() is None and client.datagrams_to_send(now=clock.now()) == []
    assert client.stats()["retransmits"] == 8


def test_udp_shortened_schedule(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng, base_timeout_s=1.0, max_retries=2)
    client.announce(params(), now=clock.now())
    client.datagrams_to_send(now=clock.now())
    start = clock.now()
    for _ in range(2):
        deadline = client.next_deadline()
        assert deadline is not None
        clock.jump_to(deadline)
        assert client.handle_timeout(now=clock.now()) == []
    deadline = client.next_deadline()
    assert deadline is not None
    clock.jump_to(deadline)
    assert client.handle_timeout(now=clock.now()) == [AnnounceFailed("timeout")]
    assert clock.now() - start == 1.0 + 2.0 + 4.0


def test_udp_connection_id_reused_then_expires(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    ann = connect(client, clock)
    client.receive_datagram(announce_reply(ann[12:16], b""), now=clock.now())
    clock.advance(59.0)
    client.announce(params(event=""), now=clock.now())
    again = one(client.datagrams_to_send(now=clock.now()))
    assert len(again) == 98 and again[:8] == CONN_ID.to_bytes(8, "big")
    client.receive_datagram(announce_reply(again[12:16], b""), now=clock.now())
    clock.advance(1.0)  # 60 s after the connect reply: the id has expired (BEP 15)
    client.announce(params(event=""), now=clock.now())
    assert len(one(client.datagrams_to_send(now=clock.now()))) == 16
    assert client.stats()["connects_sent"] == 2


def test_udp_reconnects_when_id_expires_during_retransmits(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    connect(client, clock)
    sizes = []
    for _ in range(3):  # timeouts at +15, +45 (id still fresh), +105 (expired)
        deadline = client.next_deadline()
        assert deadline is not None
        clock.jump_to(deadline)
        client.handle_timeout(now=clock.now())
        sizes.append(len(one(client.datagrams_to_send(now=clock.now()))))
    assert sizes == [98, 98, 16]
    assert client.phase is UdpPhase.CONNECTING


def test_udp_late_reply_after_new_announce_ignored(rng: random.Random, clock: FakeClock) -> None:
    client = UdpTrackerClient(rng)
    ann = connect(client, clock)
    client.announce(params(event="stopped"), now=clock.now())
    new = one(client.datagrams_to_send(now=clock.now()))
    assert client.receive_datagram(announce_reply(ann[12:16], b""), now=clock.now()) == []
    assert isinstance(client.receive_datagram(announce_reply(new[12:16], b""), now=clock.now())[0], AnnounceDone)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=60), st.booleans())
def test_udp_garbage_with_matching_txid_never_raises(tail: bytes, connected: bool) -> None:
    clock = FakeClock()
    client = UdpTrackerClient(random.Random(7))
    if connected:
        ann = connect(client, clock)
        txid = ann[12:16]
    else:
        client.announce(params(), now=clock.now())
        txid = one(client.datagrams_to_send(now=clock.now()))[12:16]
    events = client.receive_datagram(tail[:4] + txid + tail[4:], now=clock.now())
    assert len(events) <= 1


# -- Announcer (BEP 12) ------------------------------------------------------------------------

def ok(interval: int = 1800, min_interval: int | None = None, **kw: object) -> AnnounceResult:
    return AnnounceResult(interval, min_interval, (("10.0.0.1", 1),), **kw)  # type: ignore[arg-type]


def poll_job(a: Announcer, clock: FakeClock) -> AnnounceJob:
    job = a.poll(now=clock.now())
    assert job is not None
    return job


def test_announcer_nothing_before_start(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    assert a.poll(now=clock.now()) is None and a.next_deadline() is None and not a.active


def test_announcer_skips_unsupported_schemes_and_duplicates(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["wss://x/", "http://a/"], ["http://a/", "dht://y"], [], ["udp://b:80"]], rng, now=clock.now())
    assert a.tracker_count == 2
    assert [(s["url"], s["tier"]) for s in a.status()] == [("http://a/", 0), ("udp://b:80", 1)]


def test_announcer_shuffles_tiers_with_rng(clock: FakeClock) -> None:
    urls = [f"http://t{i}/" for i in range(6)]
    firsts = set()
    for seed in range(30):
        a = Announcer([urls], random.Random(seed), now=clock.now())
        a.start(now=clock.now())
        firsts.add(poll_job(a, clock).url)
    assert len(firsts) > 1


def test_announcer_tier_order_and_promotion(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/", "http://b/", "udp://c:1"]], rng, now=clock.now())
    a.start(now=clock.now())
    first = poll_job(a, clock)
    assert first.event == "started" and a.poll(now=clock.now()) is None  # one job in flight
    a.job_failed(first, "connection refused", now=clock.now())
    second = poll_job(a, clock)
    assert second.url != first.url and second.event == "started"
    a.job_done(second, ok(interval=900), now=clock.now())
    order = [s["url"] for s in a.status()]
    assert order[0] == second.url  # BEP 12: promoted to the front of its tier
    assert a.next_deadline() == clock.now() + 900
    clock.advance(900)
    third = poll_job(a, clock)
    assert (third.url, third.event) == (second.url, "")


def test_announcer_fails_over_to_next_tier_then_restarts_at_tier_one(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"], ["http://b/"]], rng, now=clock.now())
    a.start(now=clock.now())
    ja = poll_job(a, clock)
    assert ja.url == "http://a/"
    a.job_done(ja, AnnounceResult(1800, None, (), failure="not registered"), now=clock.now())
    assert a.next_deadline() == clock.now()
    jb = poll_job(a, clock)
    assert (jb.url, jb.event) == ("http://b/", "started")
    a.job_done(jb, ok(interval=600), now=clock.now())
    st_a = a.status()[0]
    assert st_a["last_error"] == "tracker failure: not registered"
    clock.advance(600)
    assert poll_job(a, clock).url == "http://a/"  # every round starts at the first tier


def test_announcer_backoff_after_whole_round_fails(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"], ["udp://b:1"]], rng, now=clock.now())
    a.start(now=clock.now())
    waits = []
    for _ in range(8):
        for _ in range(2):
            clock.jump_to(a.next_deadline() or 0.0)
            job = poll_job(a, clock)
            assert job.event == "started"
            a.job_failed(job, "refused", now=clock.now())
        deadline = a.next_deadline()
        assert deadline is not None
        waits.append(deadline - clock.now())
    assert waits == [30, 60, 120, 240, 480, 960, 1800, 1800]
    clock.jump_to(a.next_deadline() or 0.0)
    job = poll_job(a, clock)
    assert job.url == "http://a/"
    a.job_done(job, ok(interval=1000), now=clock.now())
    a.job_failed(job, "late duplicate", now=clock.now())  # stale: ignored
    assert a.next_deadline() == clock.now() + 1000


def test_announcer_interval_and_min_interval_honoured(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    t0 = clock.now()
    a.job_done(poll_job(a, clock), ok(interval=300, min_interval=400), now=t0)
    clock.jump_to(t0 + 399)
    assert a.poll(now=clock.now()) is None
    clock.jump_to(t0 + 400)
    assert poll_job(a, clock).event == ""


def test_announcer_completed_sent_once_immediately(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    a.job_done(poll_job(a, clock), ok(), now=clock.now())
    clock.advance(10)
    a.completed(now=clock.now())
    job = poll_job(a, clock)
    assert job.event == "completed"
    a.job_done(job, ok(interval=700), now=clock.now())
    a.completed(now=clock.now())  # only once
    assert a.next_deadline() == clock.now() + 700
    clock.advance(700)
    assert poll_job(a, clock).event == ""


def test_announcer_completed_while_started_in_flight(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    started = poll_job(a, clock)
    a.completed(now=clock.now())
    assert a.poll(now=clock.now()) is None
    a.job_done(started, ok(), now=clock.now())
    assert poll_job(a, clock).event == "completed"


def test_announcer_stop_one_short_try_to_last_tracker(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"], ["http://b/"]], rng, now=clock.now())
    a.start(now=clock.now())
    ja = poll_job(a, clock)
    a.job_failed(ja, "down", now=clock.now())
    a.job_done(poll_job(a, clock), ok(tracker_id=b"T1"), now=clock.now())
    clock.advance(100)
    a.stop(now=clock.now())
    assert a.active
    stop = poll_job(a, clock)
    assert (stop.url, stop.event, stop.timeout_s, stop.tracker_id) == ("http://b/", "stopped", STOP_TIMEOUT_S, b"T1")
    a.job_failed(stop, "timeout", now=clock.now())  # one try only: no failover, no retry
    assert a.next_deadline() is None and a.poll(now=clock.now() + 10_000) is None and not a.active


def test_announcer_stop_abandons_job_in_flight(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    started = poll_job(a, clock)
    a.stop(now=clock.now())
    stop = poll_job(a, clock)
    assert (stop.url, stop.event) == ("http://a/", "stopped")
    a.job_done(started, ok(), now=clock.now())  # stale
    assert a.poll(now=clock.now()) is None
    a.job_done(stop, ok(), now=clock.now())
    assert not a.active and a.next_deadline() is None


def test_announcer_stop_without_any_contact_sends_nothing(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    a.job_failed(poll_job(a, clock), "down", now=clock.now())
    a.stop(now=clock.now())
    assert a.poll(now=clock.now() + 5000) is None and not a.active
    a.start(now=clock.now())  # restart after stop
    assert poll_job(a, clock).event == "started"


def test_announcer_job_timeout_counts_as_failure(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/", "http://b/"]], rng, now=clock.now(), job_timeout_s=20.0)
    a.start(now=clock.now())
    first = poll_job(a, clock)
    assert first.timeout_s == 20.0 and a.next_deadline() == clock.now() + 20.0
    clock.advance(20.0)
    second = poll_job(a, clock)
    assert second.url != first.url and second.event == "started"
    a.job_done(first, ok(), now=clock.now())  # too late: ignored
    assert a.poll(now=clock.now()) is None
    errors = {s["url"]: s["last_error"] for s in a.status()}
    assert errors[first.url] == "timeout"


def test_announcer_want_more_peers_respects_min_interval(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    t0 = clock.now()
    a.job_done(poll_job(a, clock), ok(interval=1800, min_interval=300), now=t0)
    clock.advance(10)
    a.want_more_peers(now=clock.now())
    assert a.next_deadline() == t0 + 300
    clock.jump_to(t0 + 299)
    assert a.poll(now=clock.now()) is None
    clock.jump_to(t0 + 300)
    job = poll_job(a, clock)
    a.job_done(job, ok(interval=1800), now=clock.now())
    t1 = clock.now()
    clock.jump_to(t1 + 1000)
    a.want_more_peers(now=clock.now())
    assert a.next_deadline() == clock.now()  # long past the floor: right away


def test_announcer_want_more_peers_default_floor(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    t0 = clock.now()
    a.job_done(poll_job(a, clock), ok(interval=1800), now=t0)
    a.want_more_peers(now=t0)
    assert a.next_deadline() == t0 + 60  # no min interval: 60 s floor


def test_announcer_status_fields(rng: random.Random, clock: FakeClock) -> None:
    a = Announcer([["http://a/"]], rng, now=clock.now())
    a.start(now=clock.now())
    job = poll_job(a, clock)
    assert a.status()[0]["updating"] is True
    a.job_done(job, ok(interval=900, complete=4, incomplete=9, warning="be nice"), now=clock.now())
    s = a.status()[0]
    assert (s["seeders"], s["leechers"], s["peers"], s["warning"], s["last_error"]) == (4, 9, 1, "be nice", None)
    assert s["next_announce_at"] == clock.now() + 900 and s["last_ok_at"] == clock.now()
