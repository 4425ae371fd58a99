r"""Pure HTTP/1.1 client codec for tracker announces (RFC 9112 subset, BEP 3 trackers).

In scope: splitting an http/https URL, encoding one ``GET`` request, and parsing one response
(status line, headers, ``Content-Length`` / chunked / read-until-close bodies) with caps on header
and body size.  Out of scope: sockets, TLS (``tracker.HttpRequest`` wraps this over
``ssl.MemoryBIO``), redirects (exposed, followed by the caller), compression (refused: the
CVE-2016-7164 gzip crash is why, PROTOCOL.md section 5), keep-alive and pipelining.

    HEADERS --> BODY_LENGTH ------------------------------> DONE
            \-> CHUNK_SIZE <-> CHUNK_DATA -> CHUNK_CRLF     ^
            |        \--(size 0)--> TRAILERS --------------/|
            \-> BODY_UNTIL_CLOSE --(eof)--------------------/   any state --(bad input)--> ERROR
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from dataclasses import dataclass

from .errors import TrackerError
from .urls import DEFAULT_PORTS, HTTP_SCHEMES, split_url

HTTP_MAX_HEADER_BYTES = 64 * 1024  # convention for tracker replies (minibt brief); h11 uses 16 KiB
HTTP_MAX_BODY_BYTES = 2 * 1024 * 1024  # PROTOCOL.md section 5: cap tracker response sizes
HTTP_MAX_CHUNK_LINE_BYTES = 1024  # convention: chunk-size line incl. extensions (RFC 9112 7.1)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})  # RFC 9110 15.4
USER_AGENT = "minibt/0.1.0"

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_LINE_SPLIT = re.compile(rb"\r?\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-9][0-9][0-9])(?:[ \t][\x09\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# Everything printable in ASCII except space stays as it is in the request target; the rest
# (space, controls, non-ASCII) is percent-encoded, so no URL can split the request line.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True, slots=True)
class HttpTarget:
    """Where an http(s) URL points and what goes on the request line."""

    scheme: str
    host: str  # without IPv6 brackets
    port: int
    target: str  # "/path?query", always starts with "/"

    @property
    def use_tls(self) -> bool:
        return self.scheme == "https"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == DEFAULT_PORTS[self.scheme]:
            return host
        return f"{host}:{self.port}"


def parse_http_url(url: str) -> HttpTarget:
    """Split an http/https URL (host and port checked by urls.split_url); else TrackerError."""
    try:
        parts = split_url(url, HTTP_SCHEMES)
    except ValueError as exc:
        raise TrackerError(f"bad tracker URL {url[:200]!r}: {exc}") from None
    target = parts.target
    if not target.startswith("/"):
        target = "/" + target
    target = urllib.parse.quote(target, safe=_TARGET_SAFE)
    return HttpTarget(parts.scheme, parts.host, parts.port, target)


def encode_get_request(target: HttpTarget, *, user_agent: str = USER_AGENT) -> bytes:
    """The complete ``GET`` request for one response on a ``Connection: close`` connection."""
    if any(c in user_agent for c in "\r\n"):
        raise ValueError("user_agent must not contain CR/LF")
    host = target.host_header.encode("ascii")
    return b"".join(
        (
            b"GET ", target.target.encode("ascii"), b" HTTP/1.1\r\n",
            b"Host: ", host, b"\r\n",
            b"User-Agent: ", user_agent.encode("utf-8"), b"\r\n",
            b"Accept-Encoding: identity\r\n",
            b"Connection: close\r\n\r\n",
        )
    )


class HttpPhase(enum.Enum):
    HEADERS = enum.auto()
    BODY_LENGTH = enum.auto()
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_CRLF = enum.auto()
    TRAILERS = enum.auto()
    BODY_UNTIL_CLOSE = enum.auto()
    DONE = enum.auto()
    ERROR = enum.auto()


class HttpResponseParser:
    """Parses one HTTP/1.x response fed in arbitrary pieces; never raises on remote input.

    Malformed or oversized input moves the parser to ERROR with a message in :attr:`error`;
    :meth:`result` then raises TrackerError.  The unparsed buffer never holds more than the
    header cap (or one chunk-size line) plus one ``receive_data`` argument.
    """

    def __init__(
        self, *, max_body: int = HTTP_MAX_BODY_BYTES, max_header_bytes: int = HTTP_MAX_HEADER_BYTES
    ) -> None:
        self._max_body = max_body
        self._max_header = max_header_bytes
        self._buf = bytearray()
        self._body = bytearray()
        self._phase = HttpPhase.HEADERS
        self._remaining = 0  # bytes left in the Content-Length body or current chunk
        self._trailer_bytes = 0
        self._scanned = 0  # how far into _buf a terminator search has already looked
        self.status: int | None = None
        self.headers: tuple[tuple[str, str], ...] = ()
        self.error: str | None = None

    @property
    def phase(self) -> HttpPhase:
        return self._phase

    @property
    def done(self) -> bool:
        """True once the response is complete or has failed."""
        return self._phase in (HttpPhase.DONE, HttpPhase.ERROR)

    @property
    def headers_complete(self) -> bool:
        return self.status is not None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        low = name.lower()
        for key, value in self.headers:
            if key == low:
                return value
        return None

    def result(self) -> tuple[int, bytes]:
        """``(status, body)`` of the complete response, else raise TrackerError."""
        if self.error is not None:
            raise TrackerError(self.error)
        if self._phase is not HttpPhase.DONE or self.status is None:
            raise TrackerError("HTTP response not complete")
        return self.status, bytes(self._body)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self.done or not data:
            return
        self._buf += data
        self._process()

    def eof(self) -> None:
        """The server closed the connection."""
        if self._phase is HttpPhase.BODY_UNTIL_CLOSE:
            self._phase = HttpPhase.DONE
        elif not self.done:
            self._fail(f"connection closed before the response was complete ({self._phase.name.lower()})")

    # -- internals -------------------------------------------------------------------------

    def _fail(self, msg: str) -> None:
        self.error = msg
        self._phase = HttpPhase.ERROR
        self._scanned = 0
        self._buf.clear()
        self._body.clear()

    def _process(self) -> None:
        while self._buf and not self.done:
            phase = self._phase
            if phase is HttpPhase.HEADERS:
                if not self._parse_head():
                    return
            elif phase is HttpPhase.BODY_LENGTH or phase is HttpPhase.CHUNK_DATA:
                self._take_body()
            elif phase is HttpPhase.CHUNK_SIZE:
                if not self._parse_chunk_size():
                    return
            elif phase is HttpPhase.CHUNK_CRLF:
                if not self._parse_chunk_crlf():
                    return
            elif phase is HttpPhase.TRAILERS:
                if not self._parse_trailer_line():
                    return
            else:  # BODY_UNTIL_CLOSE
                if len(self._body) + len(self._buf) > self._max_body:
                    self._fail(f"HTTP body larger than {self._max_body} bytes")
                    return
                self._body += self._buf
                self._buf.clear()

    def _parse_head(self) -> bool:
        match = _HEADER_END.search(self._buf, self._scanned)
        if match is None:
            self._scanned = max(0, len(self._buf) - 3)  # a terminator may straddle the next piece
            if len(self._buf) > self._max_header:
                self._fail(f"HTTP header larger than {self._max_header} bytes")
            return False
        if match.end() > self._max_header:
            self._fail(f"HTTP header larger than {self._max_header} bytes")
            return False
        self._scanned = 0
        lines = _LINE_SPLIT.split(bytes(self._buf[: match.start()]))
        del self._buf[: match.end()]
        status_match = _STATUS_LINE.fullmatch(lines[0])
        if status_match is None:
            self._fail(f"bad HTTP status line {bytes(lines[0][:80])!r}")
            return False
        status = int(status_match.group(1))
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or _TOKEN.fullmatch(name) is None:
                self._fail(f"bad HTTP header line {bytes(line[:80])!r}")
                return False
            headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
        if 100 <= status < 200:
            if status == 101:
                self._fail("unexpected HTTP 101 Switching Protocols")
                return False
            return True  # RFC 9110 15.2: skip interim responses, the final one follows
        self.status = status
        self.headers = tuple(headers)
        self._choose_framing(status)
        return True

    def _values(self, name: str) -> list[str]:
        out: list[str] = []
        for key, value in self.headers:
            if key == name:
                out.extend(v.strip(" \t").lower() for v in value.split(","))
        return [v for v in out if v]

    def _choose_framing(self, status: int) -> None:
        encodings = [e for e in self._values("content-encoding") if e != "identity"]
        if encodings:
            # PROTOCOL.md section 5 (CVE-2016-7164): never inflate tracker replies.
            self._fail(f"refusing Content-Encoding {', '.join(encodings)}")
            return
        if status in (204, 304):  # RFC 9112 6.3: no body
            self._phase = HttpPhase.DONE
            return
        codings = [c for c in self._values("transfer-encoding") if c != "identity"]
        if codings:
            if codings != ["chunked"]:
                self._fail(f"unsupported Transfer-Encoding {', '.join(codings)}")
                return
            self._phase = HttpPhase.CHUNK_SIZE
            return
        lengths = set(self._values("content-length"))
        if not lengths:
            self._phase = HttpPhase.BODY_UNTIL_CLOSE
            return
        if len(lengths) != 1:
            self._fail("conflicting Content-Length headers")
            return
        text = lengths.pop()
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            self._fail(f"bad Content-Length {text[:40]!r}")
            return
        length = int(text)
        if length > self._max_body:
            self._fail(f"HTTP body of {length} bytes is larger than {self._max_body}")
            return
        self._remaining = length
        self._phase = HttpPhase.BODY_LENGTH if length else HttpPhase.DONE

    def _take_body(self) -> None:
        take = min(self._remaining, len(self._buf))
        with memoryview(self._buf) as view:
            self._body += view[:take]
        del self._buf[:take]
        self._remaining -= take
        if self._remaining == 0:
            if self._phase is HttpPhase.BODY_LENGTH:
                self._phase = HttpPhase.DONE
                self._buf.clear()  # Connection: close, so anything after the body is junk
            else:
                self._phase = HttpPhase.CHUNK_CRLF

    def _take_line(self, cap: int) -> bytes | None:
        end = self._buf.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buf)
            if len(self._buf) > cap:
                self._fail(f"HTTP line longer than {cap} bytes")
            return None
        if end > cap:
            self._fail(f"HTTP line longer than {cap} bytes")
            return None
        self._scanned = 0
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line[:-1] if line.endswith(b"\r") else line

    def _parse_chunk_size(self) -> bool:
        line = self._take_line(HTTP_MAX_CHUNK_LINE_BYTES)
        if line is None:
            return False
        size_text = line.split(b";", 1)[0].strip(b" \t")
        if _HEX.fullmatch(size_text) is None:
            self._fail(f"bad chunk size line {line[:40]!r}")
            return False
        size = int(size_text, 16)
        if size == 0:
            self._phase = HttpPhase.TRAILERS
        elif len(self._body) + size > self._max_body:
            self._fail(f"HTTP body larger than {self._max_body} bytes")
            return False
        else:
            self._remaining = size
            self._phase = HttpPhase.CHUNK_DATA
        return True

    def _parse_chunk_crlf(self) -> bool:
        if self._buf.startswith(b"\r\n"):
            del self._buf[:2]
        elif self._buf.startswith(b"\n"):
            del self._buf[:1]
        elif self._buf == b"\r":
            return False  # wait for the "\n"
        else:
            self._fail("chunk data not followed by CRLF")
            return False
        self._phase = HttpPhase.CHUNK_SIZE
        return True

    def _parse_trailer_line(self) -> bool:
        line = self._take_line(self._max_header)
        if line is None:
            return False
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self._max_header:
            self._fail(f"HTTP trailers larger than {self._max_header} bytes")
            return False
        if not line:
            self._phase = HttpPhase.DONE
            self._buf.clear()
        return True
