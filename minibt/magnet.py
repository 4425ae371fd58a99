"""Magnet URIs (BEP 9): ``magnet:?xt=urn:btih:<hash>&dn=<name>&tr=<tracker>&x.pe=<host:port>``.

In scope: parsing into a :class:`Magnet` (info-hash in 40 hex or 32 base32 characters, display
name, trackers, direct peers) with caps on counts and lengths, and building one back.
Out of scope: v2 ``urn:btmh:`` (BEP 52) hashes -- a v2-only magnet is refused with a clear
message, a hybrid one is used through its ``btih`` -- and ``ws``/``xs``/``as``/``kt`` (ignored).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

from minibt.errors import MagnetError
from minibt.urls import Addr, is_tracker_url, parse_host_port

log = logging.getLogger(__name__)


MAGNET_PREFIX = "magnet:?"
BTIH_PREFIX = "urn:btih:"  # BEP 9
BTMH_PREFIX = "urn:btmh:"  # BEP 52 (v2); not supported
MAX_MAGNET_CHARS = 64 * 1024  # convention: a longer URI is refused before parsing
MAX_FIELDS = 1000  # convention: parameters looked at (urllib max_num_fields)
MAX_TRACKERS = 50  # convention (PROTOCOL.md section 5: cap tr counts); further tr are ignored
MAX_PEERS = 50  # convention: further x.pe are ignored
MAX_NAME_CHARS = 1024  # convention: dn is cut to this length

_HEX = re.compile(r"[0-9a-fA-F]{40}")


@dataclass(frozen=True, slots=True)
class Magnet:
    """A parsed magnet link (BEP 9)."""

    info_hash: bytes  # 20-byte SHA-1 info-hash
    name: str | None = None
    trackers: tuple[str, ...] = ()
    peers: tuple[Addr, ...] = ()  # x.pe: IP literal (canonical form) or host name, and port

    @property
    def info_hash_hex(self) -> str:
        return self.info_hash.hex()


def _key_is(key: str, name: str) -> bool:
    # "tr", and the numbered form "tr.1", "tr.2", ... some clients write.
    return key == name or (key.startswith(name + ".") and key[len(name) + 1 :].isdigit())


def _parse_btih(value: str) -> bytes:
    h = value[len(BTIH_PREFIX) :]
    if len(h) == 40:
        if not _HEX.fullmatch(h):
            raise MagnetError(f"info-hash {h!r} is not hexadecimal")
        return bytes.fromhex(h)
    if len(h) == 32:
        import base64  # here: base64 loads binascii and zlib (0.1-0.2 MiB of RSS), which a .torrent download never uses

        try:
            return base64.b32decode(h.upper())
        except ValueError:  # binascii.Error is one
            raise MagnetError(f"info-hash {h!r} is not valid base32") from None
    raise MagnetError(f"info-hash has {len(h)} characters; expected 40 (hex) or 32 (base32)")


def parse_peer_address(text: str) -> Addr:
    """``host:port``, ``ipv4:port`` or ``[ipv6]:port`` (BEP 9 ``x.pe``); raises MagnetError."""
    try:
        return parse_host_port(text)
    except ValueError as e:
        raise MagnetError(f"peer address {text[:300]!r}: {e}") from None


def parse_magnet(uri: str) -> Magnet:
    """Parse a magnet URI; raises MagnetError with a readable message if it is malformed.

    Requires exactly one ``urn:btih`` info-hash (repeats of the same hash are fine).  Keeps the
    first ``MAX_TRACKERS`` distinct usable ``tr`` and the first ``MAX_PEERS`` distinct ``x.pe``.
    """
    if not isinstance(uri, str):
        raise MagnetError("a magnet URI must be a string")
    uri = uri.strip()
    if len(uri) > MAX_MAGNET_CHARS:
        raise MagnetError(f"magnet URI of {len(uri)} characters (limit {MAX_MAGNET_CHARS})")
    if not uri[: len(MAGNET_PREFIX)].lower() == MAGNET_PREFIX:
        raise MagnetError("not a magnet URI: it must start with 'magnet:?'")
    try:
        fields = urllib.parse.parse_qsl(
            uri[len(MAGNET_PREFIX) :], keep_blank_values=True, errors="replace", max_num_fields=MAX_FIELDS
        )
    except ValueError as e:
        raise MagnetError(f"magnet URI: {e}") from None
    hashes: list[bytes] = []
    v2 = False
    name: str | None = None
    trackers: dict[str, None] = {}
    peers: dict[Addr, None] = {}
    for key, value in fields:
        key = key.lower()
        if _key_is(key, "xt"):
            if value[: len(BTIH_PREFIX)].lower() == BTIH_PREFIX:
                hashes.append(_parse_btih(value))
            elif value[: len(BTMH_PREFIX)].lower() == BTMH_PREFIX:
                v2 = True
        elif key == "dn":
            if name is None:
                name = value[:MAX_NAME_CHARS]
        elif _key_is(key, "tr"):
            if len(trackers) < MAX_TRACKERS:
                if is_tracker_url(value):
                    trackers[value] = None
                else:
                    log.debug("magnet: dropping unusable tracker %r", value[:200])
        elif key == "x.pe":
            if len(peers) < MAX_PEERS:
                peers[parse_peer_address(value)] = None
    if not hashes:
        if v2:
            raise MagnetError("v2-only magnet (urn:btmh) is not supported; need an xt=urn:btih: info-hash")
        raise MagnetError("magnet URI has no 'xt=urn:btih:' info-hash")
    if any(h != hashes[0] for h in hashes):
        raise MagnetError("magnet URI has two different 'urn:btih' info-hashes")
    return Magnet(hashes[0], name, tuple(trackers), tuple(peers))


def _quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")


def make_magnet(
    info_hash: bytes, name: str | None = None, trackers: Iterable[str] = (), peers: Iterable[Addr] = ()
) -> str:
    """Build ``magnet:?xt=urn:btih:<40 hex>[&dn=...][&tr=...]*[&x.pe=...]*``."""
    if not isinstance(info_hash, bytes | bytearray) or len(info_hash) != 20:
        raise ValueError("info_hash must be 20 bytes")
    parts = [f"xt={BTIH_PREFIX}{bytes(info_hash).hex()}"]
    if name is not None:
        parts.append(f"dn={_quote(name)}")
    parts.extend(f"tr={_quote(t)}" for t in trackers)
    for host, port in peers:
        host_text = f"[{host}]" if ":" in host else host
        parts.append(f"x.pe={_quote(f'{host_text}:{port}')}")
    return MAGNET_PREFIX + "&".join(parts)
