"""KRPC, the DHT's message format (BEP 5; BEP 32 ``nodes6``/``want``; BEP 42 ``ip``): a pure codec.

A KRPC datagram is one bencoded dict: ``t`` (transaction id), ``y`` (``q`` query, ``r`` response,
``e`` error), then ``q`` + ``a`` (method and arguments), ``r`` (return values) or ``e``
(``[code, message]``).  :func:`decode` turns a datagram into one frozen message value and raises
:class:`KrpcError` (only that, for any input) on anything we cannot use; :func:`encode` is its inverse.
No sockets, no clock, no state: ``dht.py`` matches responses to queries by transaction id.

Readings of the design where it left a choice (each the one closest to BEP 5):

- ``KrpcError.tid`` is set once ``t`` itself is valid (1..16 bytes), whatever else is wrong, so the
  node can answer with an error; a query for an unknown method that has no usable ``a``/``id`` is
  refused with code 204 (method unknown), not 203: that is the answer it deserves.
- ``announce_peer`` needs ``port`` (an integer) even with ``implied_port``: BEP 5 lists four
  arguments; ``implied_port`` only allows it to be 0.  Any non-zero ``implied_port`` counts as 1
  ("if it is present and non-zero").
- ``token`` must be 1..64 bytes in responses too; a malformed top-level ``ip`` is ignored (BEP 42
  is advisory); ``want`` must be a list, and values other than ``n4``/``n6`` in it are skipped.
- ``values`` must be a list; entries that are not 6- or 18-byte strings are skipped (BEP 32 mixes
  both sizes in one list).  ``nodes``/``nodes6`` must be strings of whole 26/38-byte entries.
- Error messages and unknown method names are text for logs: UTF-8 with bad bytes replaced, cut to
  ``MAX_KRPC_TEXT_CHARS``.
- :func:`encode` adds the top-level ``v`` only when asked (``version=KRPC_VERSION``): a plain
  ``encode(msg)`` is exactly BEP 5's example packets, which have no ``v``.
- :func:`encode` refuses (``LocalProtocolError``) any message that :func:`decode` would not give back
  unchanged, so nothing we send breaks our own rules (including ``MAX_DATAGRAM_BYTES``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from minibt import bencode
from minibt.errors import BencodeError, CloseReason, LocalProtocolError, RemoteProtocolError
from minibt.urls import Addr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

KRPC_VERSION = b"MB01"  # our top-level 'v': client code "MB" + version "01" (BEP 5 / BEP 20 style)
MAX_DATAGRAM_BYTES = 1500 * 2  # convention: larger KRPC datagrams are dropped (they fit one packet)
GENERIC_ERROR, SERVER_ERROR, PROTOCOL_ERROR, METHOD_UNKNOWN = 201, 202, 203, 204  # BEP 5 'Errors'

NODE_ID_BYTES = 20  # BEP 5: 160-bit ids; info-hashes and find_node targets are the same size
MAX_TID_BYTES = 16  # convention: BEP 5 says "typically 2 characters are enough"
MAX_TOKEN_BYTES = 64  # convention: BEP 5 only says "a short binary string"
MAX_KRPC_TEXT_CHARS = 256  # convention: error messages and unknown method names, kept for logs
KRPC_MAX_DEPTH = 8  # a KRPC dict is shallow: dict -> 'r' dict -> 'values' list is depth 3
KRPC_MAX_TOKENS = 1024  # convention: a datagram full of compact peers has ~380 tokens
WANT_VALUES = frozenset({"n4", "n6"})  # BEP 32 'want'

_PORT = struct.Struct(">H")
_PEER4 = struct.Struct(">4BH")  # BEP 5 compact peer: IPv4 + port, 6 bytes
_PEER6 = struct.Struct(">16sH")  # BEP 32 compact peer: IPv6 + port, 18 bytes
_NODE4 = struct.Struct(">20s4BH")  # BEP 5 compact node info, 26 bytes
_NODE6 = struct.Struct(">20s16sH")  # BEP 32 'nodes6' entry, 38 bytes
_METHODS = (b"ping", b"find_node", b"get_peers", b"announce_peer")
_WANT_RAW = tuple(sorted(w.encode("ascii") for w in WANT_VALUES))  # a tuple: hostile items may be unhashable


class KrpcError(RemoteProtocolError, ValueError):
    """A datagram we cannot use.

    ``code`` is the KRPC error code to answer with (203 protocol error, 204 method unknown);
    ``tid`` is the transaction id if it was readable (None: nothing to answer to).
    It is a RemoteProtocolError (STYLE.md section 6) and, as the DHT design asks, a ValueError.
    """

    def __init__(self, code: int, detail: str, tid: bytes | None = None) -> None:
        super().__init__(CloseReason.MALFORMED_MESSAGE, detail)
        self.code = code
        self.tid = tid


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One entry of ``nodes``/``nodes6``: a node id and its UDP address."""

    node_id: bytes
    addr: Addr


@dataclass(frozen=True, slots=True)
class Ping:
    """BEP 5 ``ping`` query."""

    tid: bytes
    node_id: bytes


@dataclass(frozen=True, slots=True)
class FindNode:
    """BEP 5 ``find_node`` query."""

    tid: bytes
    node_id: bytes
    target: bytes
    want: frozenset[str] = frozenset()  # BEP 32: "n4", "n6"


@dataclass(frozen=True, slots=True)
class GetPeers:
    """BEP 5 ``get_peers`` query."""

    tid: bytes
    node_id: bytes
    info_hash: bytes
    want: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class AnnouncePeer:
    """BEP 5 ``announce_peer`` query."""

    tid: bytes
    node_id: bytes
    info_hash: bytes
    port: int
    token: bytes
    implied_port: bool = False  # True: use the UDP source port, not ``port`` (BEP 5)


@dataclass(frozen=True, slots=True)
class UnknownQuery:
    """A query with another method name: answered with 204 (method unknown)."""

    tid: bytes
    node_id: bytes
    method: str


@dataclass(frozen=True, slots=True)
class Response:
    """A response; which query it answers is known only from the tid."""

    tid: bytes
    node_id: bytes
    nodes: tuple[NodeInfo, ...] = ()
    nodes6: tuple[NodeInfo, ...] = ()
    values: tuple[Addr, ...] = ()  # compact peers, IPv4 and IPv6 mixed (BEP 32)
    token: bytes | None = None
    ip: Addr | None = None  # BEP 42 'ip': how the responder sees us


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """BEP 5 error message."""

    tid: bytes
    code: int
    message: str


Query: TypeAlias = Ping | FindNode | GetPeers | AnnouncePeer | UnknownQuery
Message: TypeAlias = Query | Response | ErrorReply


# ------------------------------------------------------------------------------- compact forms


def _local(detail: str) -> LocalProtocolError:
    return LocalProtocolError(CloseReason.MALFORMED_MESSAGE, detail)


def _bad(detail: str, code: int = PROTOCOL_ERROR) -> KrpcError:
    return KrpcError(code, detail)


def _show(value: object) -> str:
    """A short description of a hostile value for error details."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def encode_peer(addr: Addr) -> bytes:
    """Compact peer info: 6 bytes for an IPv4 address, 18 for IPv6 (BEP 5, BEP 32).

    The host must be an IP literal; raises LocalProtocolError otherwise or for a port outside 0..65535.
    """
    host, port = addr
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise _local(f"cannot pack {_show(addr)} as a compact peer")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise _local(f"{host[:80]!r} is not an IP address") from None
    return ip.packed + _PORT.pack(port)


def decode_peer(data: bytes) -> Addr:
    """A 6-byte (IPv4) or 18-byte (IPv6) compact peer; KrpcError(203) for any other length."""
    if len(data) == _PEER4.size:
        a, b, c, d, port = _PEER4.unpack(data)
        return f"{a}.{b}.{c}.{d}", port
    if len(data) == _PEER6.size:
        raw, port = _PEER6.unpack(data)
        return ipaddress.IPv6Address(raw).compressed, port
    raise _bad(f"a compact peer is 6 or 18 bytes, not {len(data)}")


def _encode_node_list(nodes: Iterable[NodeInfo], ip_len: int, key: str) -> bytes:
    out = []
    for node in nodes:
        if not isinstance(node.node_id, bytes) or len(node.node_id) != NODE_ID_BYTES:
            raise _local(f"{key}: node id {_show(node.node_id)} is not {NODE_ID_BYTES} bytes")
        peer = encode_peer(node.addr)
        if len(peer) != ip_len + _PORT.size:
            raise _local(f"{key}: {node.addr[0]!r} is not an IPv{4 if ip_len == 4 else 6} address")
        out.append(node.node_id + peer)
    return b"".join(out)


def encode_nodes(nodes: Iterable[NodeInfo]) -> bytes:
    """BEP 5 compact node info, 26 bytes a node (IPv4 only; LocalProtocolError otherwise)."""
    return _encode_node_list(nodes, 4, "nodes")


def encode_nodes6(nodes: Iterable[NodeInfo]) -> bytes:
    """BEP 32 ``nodes6``, 38 bytes a node (IPv6 only; LocalProtocolError otherwise)."""
    return _encode_node_list(nodes, 16, "nodes6")


def decode_nodes(data: bytes) -> tuple[NodeInfo, ...]:
    """BEP 5 compact node info; KrpcError(203) unless the length is a multiple of 26."""
    if len(data) % _NODE4.size:
        raise _bad(f"'nodes' of {len(data)} bytes is not a multiple of {_NODE4.size}")
    return tuple(NodeInfo(nid, (f"{a}.{b}.{c}.{d}", port)) for nid, a, b, c, d, port in _NODE4.iter_unpack(data))


def decode_nodes6(data: bytes) -> tuple[NodeInfo, ...]:
    """BEP 32 ``nodes6``; KrpcError(203) unless the length is a multiple of 38."""
    if len(data) % _NODE6.size:
        raise _bad(f"'nodes6' of {len(data)} bytes is not a multiple of {_NODE6.size}")
    return tuple(NodeInfo(nid, (ipaddress.IPv6Address(raw).compressed, port)) for nid, raw, port in _NODE6.iter_unpack(data))


def is_krpc(data: bytes) -> bool:
    """Whether a UDP datagram is for the DHT: KRPC starts with b"d" (a bencoded dict).

    uTP starts 0x01/0x11/0x21/0x31/0x41 and UDP tracker replies with a binary action (STYLE.md section 8).
    """
    return data[:1] == b"d"


# ------------------------------------------------------------------------------- decode


def decode(data: bytes) -> Message:
    """One KRPC datagram -> a message.  Raises KrpcError (only), for any input."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise _bad(f"expected bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > MAX_DATAGRAM_BYTES:
        raise _bad(f"datagram of {size} bytes > {MAX_DATAGRAM_BYTES}")
    try:
        d = bencode.decode(data, max_depth=KRPC_MAX_DEPTH, max_tokens=KRPC_MAX_TOKENS)
    except BencodeError as e:
        raise _bad(f"not strict bencode: {e}") from None
    if not isinstance(d, dict):
        raise _bad(f"a KRPC message is a dict, not a {type(d).__name__}")
    tid = d.get(b"t")
    if not isinstance(tid, bytes) or not 1 <= len(tid) <= MAX_TID_BYTES:
        raise _bad(f"transaction id 't' {_show(tid)} is not 1..{MAX_TID_BYTES} bytes")
    try:
        y = d.get(b"y")
        if y == b"q":
            return _decode_query(d, tid)
        if y == b"r":
            return _decode_response(d, tid)
        if y == b"e":
            return _decode_error(d, tid)
        raise _bad(f"message type 'y' {_show(y)} is not q, r or e")
    except KrpcError as e:
        e.tid = tid
        raise


def _id(d: dict[Any, Any], key: bytes, code: int = PROTOCOL_ERROR) -> bytes:
    value = d.get(key)
    if not isinstance(value, bytes) or len(value) != NODE_ID_BYTES:
        raise _bad(f"{key.decode()!r} {_show(value)} is not {NODE_ID_BYTES} bytes", code)
    return value


def _token(value: object) -> bytes:
    if not isinstance(value, bytes) or not 1 <= len(value) <= MAX_TOKEN_BYTES:
        raise _bad(f"token {_show(value)} is not 1..{MAX_TOKEN_BYTES} bytes")
    return value


def _text(raw: bytes) -> str:
    return raw[: MAX_KRPC_TEXT_CHARS * 4].decode("utf-8", "replace")[:MAX_KRPC_TEXT_CHARS]


def _want(args: dict[Any, Any]) -> frozenset[str]:
    want = args.get(b"want")
    if want is None:
        return frozenset()
    if not isinstance(want, list):
        raise _bad(f"'want' {_show(want)} is not a list")
    return frozenset(w.decode("ascii") for w in want if w in _WANT_RAW)


def _decode_query(d: dict[Any, Any], tid: bytes) -> Query:
    method = d.get(b"q")
    if not isinstance(method, bytes):
        raise _bad(f"query method 'q' {_show(method)} is not a string")
    # An unknown method deserves "method unknown" even when its arguments are unusable.
    code = PROTOCOL_ERROR if method in _METHODS else METHOD_UNKNOWN
    args = d.get(b"a")
    if not isinstance(args, dict):
        raise _bad(f"query arguments 'a' {_show(args)} are not a dict", code)
    node_id = _id(args, b"id", code)
    if method == b"ping":
        return Ping(tid, node_id)
    if method == b"find_node":
        return FindNode(tid, node_id, _id(args, b"target"), _want(args))
    if method == b"get_peers":
        return GetPeers(tid, node_id, _id(args, b"info_hash"), _want(args))
    if method == b"announce_peer":
        info_hash = _id(args, b"info_hash")
        implied = args.get(b"implied_port", 0)
        if not isinstance(implied, int):
            raise _bad(f"'implied_port' {_show(implied)} is not an integer")
        port = args.get(b"port")
        low = 0 if implied else 1
        if not isinstance(port, int) or not low <= port <= 0xFFFF:
            raise _bad(f"announce port {_show(port)} is not {low}..65535")
        return AnnouncePeer(tid, node_id, info_hash, port, _token(args.get(b"token")), implied_port=implied != 0)
    return UnknownQuery(tid, node_id, _text(method))


def _compact_nodes(r: dict[Any, Any], key: bytes) -> tuple[NodeInfo, ...]:
    blob = r.get(key)
    if blob is None:
        return ()
    if not isinstance(blob, bytes):
        raise _bad(f"{key.decode()!r} {_show(blob)} is not a string")
    return decode_nodes(blob) if key == b"nodes" else decode_nodes6(blob)


def _decode_response(d: dict[Any, Any], tid: bytes) -> Response:
    r = d.get(b"r")
    if not isinstance(r, dict):
        raise _bad(f"response values 'r' {_show(r)} are not a dict")
    node_id = _id(r, b"id")
    values = r.get(b"values")
    if values is None:
        values = []
    elif not isinstance(values, list):
        raise _bad(f"'values' {_show(values)} is not a list")
    token = r.get(b"token")
    ip = d.get(b"ip")
    return Response(
        tid,
        node_id,
        nodes=_compact_nodes(r, b"nodes"),
        nodes6=_compact_nodes(r, b"nodes6"),
        values=tuple(decode_peer(v) for v in values if isinstance(v, bytes) and len(v) in (_PEER4.size, _PEER6.size)),
        token=None if token is None else _token(token),
        ip=decode_peer(ip) if isinstance(ip, bytes) and len(ip) in (_PEER4.size, _PEER6.size) else None,
    )


def _decode_error(d: dict[Any, Any], tid: bytes) -> ErrorReply:
    e = d.get(b"e")
    if not (isinstance(e, list) and len(e) >= 2 and isinstance(e[0], int) and isinstance(e[1], bytes)):
        raise _bad(f"error 'e' {_show(e)} is not [code, message]")
    return ErrorReply(tid, e[0], _text(e[1]))


# ------------------------------------------------------------------------------- encode


def encode(msg: Message, *, version: bytes | None = None) -> bytes:
    """A message -> one KRPC datagram (canonical bencode, keys sorted).

    ``version`` (e.g. ``KRPC_VERSION``) adds the top-level ``v``; the default leaves it out, so the
    bytes are exactly BEP 5's examples.  Raises LocalProtocolError for a message that decode() would
    not give back unchanged: a field of the wrong size or type, a host that is not an IP literal, an
    IPv6 node in ``nodes``, ``want`` values other than n4/n6, text over MAX_KRPC_TEXT_CHARS, or more
    than MAX_DATAGRAM_BYTES in all.
    """
    name = type(msg).__name__
    try:
        out = _encode_unchecked(msg, version)
        again = _encode_unchecked(decode(out), version)
    except KrpcError as e:
        raise _local(f"{name} would not decode: {e.detail}") from None
    except (BencodeError, TypeError, AttributeError, UnicodeError) as e:
        raise _local(f"cannot encode {name}: {e}") from None
    if again != out:
        raise _local(f"{name} would not decode unchanged (a field decode() drops or rewrites): {_show(msg)}")
    return out


def _encode_unchecked(msg: Message, version: bytes | None) -> bytes:
    top: dict[bytes, Any] = {b"t": msg.tid}
    if isinstance(msg, Response):
        r: dict[bytes, Any] = {b"id": msg.node_id}
        if msg.nodes:
            r[b"nodes"] = encode_nodes(msg.nodes)
        if msg.nodes6:
            r[b"nodes6"] = encode_nodes6(msg.nodes6)
        if msg.values:
            r[b"values"] = [encode_peer(a) for a in msg.values]
        if msg.token is not None:
            r[b"token"] = msg.token
        top[b"y"], top[b"r"] = b"r", r
        if msg.ip is not None:
            top[b"ip"] = encode_peer(msg.ip)
    elif isinstance(msg, ErrorReply):
        top[b"y"], top[b"e"] = b"e", [msg.code, msg.message.encode("utf-8")]
    else:
        top[b"y"] = b"q"
        top[b"q"], top[b"a"] = _query_args(msg)
    if version is not None:
        top[b"v"] = version
    return bencode.encode(top)


def _query_args(msg: Query) -> tuple[bytes, dict[bytes, Any]]:
    args: dict[bytes, Any] = {b"id": msg.node_id}
    if isinstance(msg, Ping):
        return b"ping", args
    if isinstance(msg, FindNode | GetPeers):
        if isinstance(msg, FindNode):
            method, args[b"target"] = b"find_node", msg.target
        else:
            method, args[b"info_hash"] = b"get_peers", msg.info_hash
        if msg.want:
            args[b"want"] = sorted(w.encode("ascii") for w in msg.want)  # sorted: frozenset order varies
        return method, args
    if isinstance(msg, AnnouncePeer):
        args.update({b"info_hash": msg.info_hash, b"port": msg.port, b"token": msg.token})
        if msg.implied_port:
            args[b"implied_port"] = 1
        return b"announce_peer", args
    if isinstance(msg, UnknownQuery):
        return msg.method.encode("utf-8"), args
    raise _local(f"not a KRPC message: {type(msg).__name__}")
