"""Strict bencode (BEP 3) on top of the bencode2 C extension, made safe for hostile input.

bencode2 does the real decoding (strict: sorted, unique keys; no leading zeros; no trailing
data).  Before handing it any bytes we run our own iterative structural scan that enforces a
nesting-depth and a token limit, so hostile input can never exhaust the C stack or memory.
The scan is a loop over tokens, not bytes: string payloads are skipped via their length prefix.
The same scan yields the exact byte span of a top-level dict value (the raw ``info`` dict that
the info-hash is computed over; it is never re-encoded).

Decoded strings and dict keys are ``bytes``; integers are ``int``.
"""

from __future__ import annotations

import re

import bencode2

from minibt.errors import BencodeError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# libtorrent bdecode() defaults (depth_limit=100, token_limit=2,000,000); our depth is tighter
# because no legitimate BitTorrent structure nests deeper than a handful of levels.
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_TOKENS = 2_000_000
# Convention, not BEP text: libtorrent keeps bencoded integers in int64 (19 digits); we allow a
# little more but never hand an unbounded digit string to int().
MAX_INT_DIGITS = 32
# A string length longer than 20 digits cannot describe any buffer we would ever hold.
MAX_LEN_DIGITS = 20

_STR_LEN = re.compile(rb"(0|[1-9][0-9]{0,%d}):" % (MAX_LEN_DIGITS - 1))
_INT = re.compile(rb"i(?:0|-?[1-9][0-9]{0,%d})e" % (MAX_INT_DIGITS - 1))


def _string_span(buf: bytes | bytearray | memoryview, pos: int, n: int) -> tuple[int, int]:
    """The ``(body, end)`` offsets of the bencode string whose length prefix starts at ``pos``."""
    m = _STR_LEN.match(buf, pos)
    if m is None:
        raise BencodeError(f"invalid string length at byte {pos}")
    body = m.end()
    end = body + int(m.group(1))
    if end > n:
        raise BencodeError(f"truncated string at byte {pos}: {end - body} bytes announced, {n - body} present")
    return body, end

# Container states kept on the scan stack.
_LIST = 0
_DICT_KEY = 1  # a dict that expects a key (or its closing 'e') next
_DICT_VALUE = 2  # a dict that expects the value of the key just read

_D, _E, _I, _L = 0x64, 0x65, 0x69, 0x6C  # b"d", b"e", b"i", b"l"


def _as_buffer(data: Any) -> bytes | bytearray | memoryview:
    if isinstance(data, bytes | bytearray):
        return data
    if isinstance(data, memoryview):
        if data.ndim == 1 and data.format in ("B", "b", "c") and data.c_contiguous:
            return data.cast("B") if data.format != "B" else data
        return data.tobytes()
    raise BencodeError(f"expected bytes, got {type(data).__name__}")


def _scan(
    data: bytes | bytearray | memoryview, max_depth: int, max_tokens: int, want: bytes | None
) -> tuple[int, int] | None:
    """Check the structure of ``data``; return the span of top-level dict value ``want`` if asked.

    Raises BencodeError on any structural problem, an exceeded limit or trailing data.
    """
    n = len(data)
    if n == 0:
        raise BencodeError("empty input")
    stack: list[int] = []
    pos = 0
    tokens = 0
    span_start = -1
    span: tuple[int, int] | None = None
    last_top_key: bytes | None = None
    while True:
        if pos >= n:
            raise BencodeError(f"truncated input: {len(stack)} unclosed list/dict at end (byte {n})")
        c = data[pos]
        if c == _E:
            if not stack:
                raise BencodeError(f"unexpected 'e' at byte {pos}")
            if stack.pop() == _DICT_VALUE:
                raise BencodeError(f"dict key without a value before byte {pos}")
            pos += 1
        else:
            tokens += 1
            if tokens > max_tokens:
                raise BencodeError(f"more than {max_tokens} tokens (at byte {pos})")
            top = stack[-1] if stack else _LIST
            if 0x30 <= c <= 0x39:
                body, end = _string_span(data, pos, n)
                if top == _DICT_KEY:
                    stack[-1] = _DICT_VALUE
                    if want is not None and len(stack) == 1:
                        key = bytes(data[body:end])
                        if last_top_key is not None and key <= last_top_key:
                            raise BencodeError(f"dict keys not sorted or duplicated at byte {pos}")
                        last_top_key = key
                        if key == want:
                            span_start = end
                elif top == _DICT_VALUE:
                    stack[-1] = _DICT_KEY
                pos = end
            elif top == _DICT_KEY:
                raise BencodeError(f"dict key must be a string at byte {pos}")
            elif c == _I:
                m = _INT.match(data, pos)
                if m is None:
                    raise BencodeError(f"invalid integer at byte {pos}")
                if top == _DICT_VALUE:
                    stack[-1] = _DICT_KEY
                pos = m.end()
            elif c == _L or c == _D:
                if len(stack) >= max_depth:
                    raise BencodeError(f"nesting deeper than {max_depth} at byte {pos}")
                if top == _DICT_VALUE:
                    stack[-1] = _DICT_KEY
                stack.append(_LIST if c == _L else _DICT_KEY)
                pos += 1
            else:
                raise BencodeError(f"unexpected byte 0x{c:02x} at byte {pos}")
        if not stack:
            break
        if span_start >= 0 and span is None and len(stack) == 1 and stack[0] == _DICT_KEY:
            span = (span_start, pos)
    if pos != n:
        raise BencodeError(f"trailing data at byte {pos} ({n - pos} bytes)")
    return span


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> Any:
    """Decode one complete strict-bencode value.

    Strings and dict keys come back as ``bytes``.  Raises BencodeError (only) on malformed
    input, trailing data, nesting deeper than ``max_depth`` or more than ``max_tokens`` items.
    """
    return decode_with_span(data, None, max_depth=max_depth, max_tokens=max_tokens)[0]


def decode_with_span(
    data: bytes | bytearray | memoryview,
    key: bytes | None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> tuple[Any, tuple[int, int] | None]:
    """decode() plus dict_value_span(data, key) in a single scan (used for the info-hash)."""
    buf = _as_buffer(data)
    span = _scan(buf, max_depth, max_tokens, None if key is None else bytes(key))
    try:
        return bencode2.bdecode(buf), span
    except (bencode2.BencodeDecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise BencodeError(str(e)) from None


def encode(obj: Any) -> bytes:
    """Encode ``obj`` as canonical bencode (dict keys sorted).

    Accepts int (bool encodes as 0/1), bytes, bytearray, memoryview, str (encoded as UTF-8),
    list, tuple and dict with str or bytes keys.  A dict holding both ``"k"`` and ``b"k"``,
    None, floats, other types and circular references raise BencodeError.
    """
    try:
        return bytes(bencode2.bencode(obj))
    except (bencode2.BencodeEncodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
        raise BencodeError(f"cannot encode: {e}") from None


def dict_value_span(
    data: bytes | bytearray | memoryview,
    key: bytes,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> tuple[int, int] | None:
    """The [start, end) byte span of ``key``'s value in the top-level dict ``data``.

    Returns None if the key is absent or the top-level value is not a dict.  Raises
    BencodeError if ``data`` is not structurally valid bencode (same checks as decode(),
    plus sorted unique top-level keys).  Linear in the number of tokens, not bytes.
    """
    return _scan(_as_buffer(data), max_depth, max_tokens, bytes(key))


def decode_whole_lenient(data: bytes | bytearray | memoryview) -> Any:
    """Strict decode() if it succeeds, else :func:`decode_lenient_with_span`'s reading with nothing allowed
    after the value: for bytes authenticated by a hash (an info dict that matches its info-hash), which
    other clients read like a .torrent file's.  Raises BencodeError."""
    try:
        return decode(data)
    except BencodeError:
        pass
    value, _, end = decode_lenient_with_span(data, None)
    if end != len(_as_buffer(data)):
        raise BencodeError(f"trailing data: {len(_as_buffer(data)) - end} bytes after the value")
    return value


def decode_lenient_with_span(
    data: bytes | bytearray | memoryview,
    key: bytes | None,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> tuple[Any, tuple[int, int] | None, int]:
    """Decode bencode as other clients read .torrent files from disk; for disk files (and, through
    :func:`decode_whole_lenient`, for an info dict that matched its info-hash) only.

    Unlike decode(): dict keys may come in any order (a repeated key is still an error: which value
    would count is ambiguous), and bytes after the first complete value are ignored.  Integers and
    string lengths stay strict.  Iterative, with the same depth and token limits as decode().
    Returns (value, span of top-level dict value ``key`` or None, end of the value).
    Raises BencodeError.  Peer input (wire, ut_metadata, KRPC) must keep using the strict decode().
    """
    buf = _as_buffer(data)
    n = len(buf)
    if n == 0:
        raise BencodeError("empty input")
    # Each open container: [the list or dict, the dict key waiting for its value (or None)].
    stack: list[list[Any]] = []
    pos = 0
    tokens = 0
    span: tuple[int, int] | None = None
    span_start = -1
    value: Any = None
    while True:
        if pos >= n:
            raise BencodeError(f"truncated input: {len(stack)} unclosed list/dict at end (byte {n})")
        c = buf[pos]
        start = pos
        done = False
        if c == _E:
            if not stack:
                raise BencodeError(f"unexpected 'e' at byte {pos}")
            frame = stack.pop()
            if frame[1] is not None:
                raise BencodeError(f"dict key without a value before byte {pos}")
            value = frame[0]
            pos += 1
            done = True
        else:
            tokens += 1
            if tokens > max_tokens:
                raise BencodeError(f"more than {max_tokens} tokens (at byte {pos})")
            top = stack[-1] if stack else None
            expecting_key = top is not None and isinstance(top[0], dict) and top[1] is None
            if 0x30 <= c <= 0x39:
                body, end = _string_span(buf, pos, n)
                s = bytes(buf[body:end])
                pos = end
                if expecting_key:
                    assert top is not None
                    if s in top[0]:
                        raise BencodeError(f"duplicate dict key at byte {start}")
                    top[1] = s
                    if key is not None and len(stack) == 1 and s == key:
                        span_start = pos
                    continue
                value, done = s, True
            elif expecting_key:
                raise BencodeError(f"dict key must be a string at byte {pos}")
            elif c == _I:
                m = _INT.match(buf, pos)
                if m is None:
                    raise BencodeError(f"invalid integer at byte {pos}")
                value, done = int(m.group()[1:-1]), True
                pos = m.end()
            elif c == _L or c == _D:
                if len(stack) >= max_depth:
                    raise BencodeError(f"nesting deeper than {max_depth} at byte {pos}")
                stack.append([[] if c == _L else {}, None])
                pos += 1
            else:
                raise BencodeError(f"unexpected byte 0x{c:02x} at byte {pos}")
        if not done:
            continue
        if not stack:
            return value, span, pos
        parent = stack[-1]
        if isinstance(parent[0], list):
            parent[0].append(value)
        else:
            parent[0][parent[1]] = value
            parent[1] = None
            if len(stack) == 1 and span_start >= 0 and span is None:
                span = (span_start, pos)
