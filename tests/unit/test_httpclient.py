from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minibt.errors import TrackerError
from minibt.httpclient import (
    HttpPhase,
    HttpResponseParser,
    encode_get_request,
    parse_http_url,
)

CL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world"
CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\nworld, 123\r\n0\r\nX-Trailer: yes\r\n\r\n"
)


def feed(chunks: list[bytes], *, eof: bool = False, **kw: int) -> HttpResponseParser:
    parser = HttpResponseParser(**kw)
    for chunk in chunks:
        parser.receive_data(chunk)
    if eof:
        parser.eof()
    return parser


def splits(data: bytes, rng: random.Random) -> list[list[bytes]]:
    """The same bytes whole, byte by byte, and at random cut points (STYLE.md section 9 inv. 1)."""
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), k=min(5, len(data) - 1)))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    return out


def test_parse_url_defaults_and_query() -> None:
    t = parse_http_url("http://Tracker.Example/announce?passkey=abc#frag")
    assert (t.scheme, t.host, t.port, t.target) == ("http", "tracker.example", 80, "/announce?passkey=abc")
    assert not t.use_tls
    s = parse_http_url("https://[2001:db8::1]:8443")
    assert (s.host, s.port, s.target, s.use_tls) == ("2001:db8::1", 8443, "/", True)
    assert s.host_header == "[2001:db8::1]:8443"


@pytest.mark.parametrize(
    "url", ["udp://t.example:80/announce", "wss://t.example/", "http://t.example:99999/", "http:///x", "t.example"]
)
def test_parse_url_rejects_unusable(url: str) -> None:
    with pytest.raises(TrackerError):
        parse_http_url(url)


def test_request_target_cannot_split_request_line() -> None:
    t = parse_http_url("http://t.example/a b?x=\u00e9")
    assert t.target == "/a%20b?x=%C3%A9"


def test_encode_get_request_exact_bytes() -> None:
    req = encode_get_request(parse_http_url("http://t.example:6969/ann?a=1"), user_agent="ua/1")
    assert req == (
        b"GET /ann?a=1 HTTP/1.1\r\nHost: t.example:6969\r\nUser-Agent: ua/1\r\n"
        b"Accept-Encoding: identity\r\nConnection: close\r\n\r\n"
    )


def test_content_length_split_invariance(rng: random.Random) -> None:
    for chunks in splits(CL_RESPONSE, rng):
        parser = feed(chunks)
        assert parser.done
        assert parser.result() == (200, b"hello world")
        assert parser.header("CONTENT-TYPE") == "text/plain"


def test_chunked_split_at_every_byte() -> None:
    expected = (200, b"hello world, 123")
    for cut in range(len(CHUNKED_RESPONSE) + 1):
        parser = feed([CHUNKED_RESPONSE[:cut], CHUNKED_RESPONSE[cut:]])
        assert parser.result() == expected, cut
    parser = feed([CHUNKED_RESPONSE[i : i + 1] for i in range(len(CHUNKED_RESPONSE))])
    assert parser.result() == expected


def test_chunked_not_done_before_last_chunk() -> None:
    parser = feed([CHUNKED_RESPONSE[:-2]])
    assert not parser.done
    parser.eof()
    with pytest.raises(TrackerError, match="closed before"):
        parser.result()


def test_bare_lf_line_endings_accepted() -> None:
    parser = feed([b"HTTP/1.0 200 OK\nContent-Length: 2\n\nok"])
    assert parser.result() == (200, b"ok")


def test_read_until_close_needs_eof(rng: random.Random) -> None:
    data = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nd8:intervali900ee"
    for chunks in splits(data, rng):
        parser = feed(chunks)
        assert not parser.done
        assert parser.phase is HttpPhase.BODY_UNTIL_CLOSE
        parser.eof()
        assert parser.result() == (200, b"d8:intervali900ee")


def test_eof_before_body_complete_is_an_error() -> None:
    parser = feed([CL_RESPONSE[:-3]], eof=True)
    assert parser.done
    with pytest.raises(TrackerError):
        parser.result()


def test_result_before_done_raises() -> None:
    with pytest.raises(TrackerError, match="not complete"):
        feed([b"HTTP/1.1 200 OK\r\n"]).result()


def test_bytes_after_content_length_body_are_ignored() -> None:
    assert feed([CL_RESPONSE + b"JUNK"]).result() == (200, b"hello world")


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n32\r\n" + b"x" * 50 + b"\r\n33\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 101,
    ],
    ids=["content-length", "one-chunk", "chunks-add-up", "until-close"],
)
def test_oversized_body_rejected(data: bytes) -> None:
    parser = feed([data], max_body=100)
    assert parser.done and parser.error is not None and "larger" in parser.error
    with pytest.raises(TrackerError):
        parser.result()


def test_body_at_cap_accepted() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"y" * 100
    assert feed([data], max_body=100).result() == (200, b"y" * 100)


def test_oversized_header_rejected_without_terminator() -> None:
    parser = HttpResponseParser(max_header_bytes=1024)
    parser.receive_data(b"HTTP/1.1 200 OK\r\n")
    for _ in range(100):
        parser.receive_data(b"X-Filler: " + b"a" * 20 + b"\r\n")
    assert parser.done
    assert parser.error is not None and "header larger" in parser.error


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/2 200 OK\r\n\r\n",
        b"ICY 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200OK\r\n\r\n",
        b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
)
def test_malformed_responses_fail_cleanly(data: bytes) -> None:
    parser = feed([data])
    assert parser.done and parser.phase is HttpPhase.ERROR
    with pytest.raises(TrackerError):
        parser.result()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br, identity"])
def test_content_encoding_refused(coding: str) -> None:
    data = f"HTTP/1.1 200 OK\r\nContent-Encoding: {coding}\r\nContent-Length: 2\r\n\r\nxx".encode()
    with pytest.raises(TrackerError, match="Content-Encoding"):
        feed([data]).result()


def test_identity_content_encoding_accepted() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Encoding: identity\r\nContent-Length: 2\r\n\r\nxx"
    assert feed([data]).result() == (200, b"xx")


def test_interim_100_continue_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope"
    assert feed([data]).result() == (404, b"nope")


def test_204_has_no_body() -> None:
    parser = feed([b"HTTP/1.1 204 No Content\r\n\r\n"])
    assert parser.result() == (204, b"")


def test_data_after_done_ignored() -> None:
    parser = feed([CL_RESPONSE])
    parser.receive_data(b"HTTP/1.1 500 X\r\n\r\n")
    parser.eof()
    assert parser.result() == (200, b"hello world")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8), st.booleans())
def test_garbage_only_tracker_error(chunks: list[bytes], eof: bool) -> None:
    parser = feed(chunks, eof=eof, max_body=256, max_header_bytes=256)
    try:
        status, body = parser.result()
    except TrackerError:
        return
    assert 200 <= status <= 599 and len(body) <= 256


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40), st.integers(min_value=0, max_value=4))
def test_garbage_after_valid_header_only_tracker_error(tail: bytes, which: int) -> None:
    heads = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
    ]
    parser = feed([heads[which], tail], eof=True, max_body=32)
    try:
        parser.result()
    except TrackerError:
        pass
    assert parser.done
