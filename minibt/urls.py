"""Tracker URLs, host names and peer addresses that come from outside, validated in one place.

Every source of a tracker URL (a .torrent, a magnet's ``tr``, an HTTP redirect, the command
line) and of a ``host:port`` peer address (a magnet's ``x.pe``, the config file, ``--peer``)
goes through this module, so a value that passes here cannot make the loop fail later in
``urljoin``, the IDNA codec, ``ssl`` or ``sendto``.  A URL passes when its scheme is http, https
or udp, its host is a well-formed name (ASCII letters, digits, ``-`` and ``_``; non-ASCII names
must IDNA-encode), a dotted-quad IPv4 address or a bracketed IPv6 literal, its port is 1..65535,
and it is short and free of whitespace and control characters.  Pure: no sockets, no DNS.
Errors are ``ValueError`` with a readable message; callers wrap them in their own error type.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

MAX_URL_CHARS = 2048  # convention (de facto browser/server limit); longer tracker URLs are refused
MAX_HOSTNAME_CHARS = 253  # RFC 1035 section 2.3.4 (without the trailing dot)
MAX_LABEL_CHARS = 63  # RFC 1035 section 2.3.4
TRACKER_SCHEMES = ("http", "https", "udp")  # BEP 3 and BEP 15; others (wss://, ...) are not trackers
HTTP_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}  # RFC 9110 section 4.2; udp:// has no default (BEP 15)
MAX_PORT = 0xFFFF

Addr = tuple[str, int]  # a peer address: (host name or IP literal, port); the one definition

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+.-")  # RFC 3986 section 3.1
# Host-name characters: RFC 1123 letters, digits and hyphen, plus "_" seen in real tracker names.
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class TrackerUrl:
    """A validated URL split into its parts."""

    scheme: str  # lower case
    host: str  # ASCII: lower-case (IDNA-encoded) name, dotted-quad IPv4, or IPv6 without brackets
    port: int  # 1..65535 (the scheme's default when the URL has none)
    target: str  # everything after the authority up to any "#fragment": "/path?query", may be ""


def parse_port(text: str) -> int:
    """A decimal port 1..65535 (ASCII digits only: no sign, no spaces, no other scripts)."""
    if not text or len(text) > 5 or not set(text) <= _DIGITS:
        raise ValueError(f"bad port {text[:20]!r} (expected 1-65535)")
    port = int(text)
    if not 0 < port <= MAX_PORT:
        raise ValueError(f"bad port {text!r} (expected 1-65535)")
    return port


def canonical_host(host: str) -> str:
    """A host name or IPv4 literal in canonical form (lower case, IDNA, no trailing dot).

    IPv6 literals are not accepted here (the caller strips and checks the brackets).
    """
    if not host:
        raise ValueError("no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"host name {host[:80]!r} cannot be IDNA-encoded") from None
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_HOSTNAME_CHARS:
        raise ValueError(f"host name {host[:80]!r} is empty or longer than {MAX_HOSTNAME_CHARS} characters")
    labels = name.split(".")
    for label in labels:
        if not 0 < len(label) <= MAX_LABEL_CHARS or not set(label) <= _HOST_CHARS:
            raise ValueError(f"{host[:80]!r} is not an IP address or host name")
        if label[0] == "-" or label[-1] == "-":
            raise ValueError(f"{host[:80]!r} is not an IP address or host name (label starts or ends with '-')")
    last = labels[-1]
    if set(last) <= _DIGITS or last.startswith("0x"):
        # WHATWG URL "ends in a number": such a name is an IPv4 address or nothing (no "0x7f.1",
        # "017.0.0.1" or "2130706433" forms that inet_aton would read in its own way).
        try:
            return str(ipaddress.IPv4Address(name))
        except ValueError:
            raise ValueError(f"{host[:80]!r} is not an IP address or host name") from None
    return name


def _ipv6_literal(text: str) -> str:
    if "%" in text:
        raise ValueError(f"IPv6 zone ids are not allowed: [{text[:80]}]")
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise ValueError(f"{text[:80]!r} is not an IPv6 address") from None


def split_host_port(text: str, *, default_port: int | None = None) -> Addr:
    """``host:port``, ``ipv4:port`` or ``[ipv6]:port`` -> (canonical host, port).

    Without a port (or with an empty one after ``:``) ``default_port`` is used when given.
    """
    if text.startswith("["):
        inner, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"{text[:80]!r}: unclosed '[' (expected [ipv6]:port)")
        host = _ipv6_literal(inner)
        if rest and not rest.startswith(":"):
            raise ValueError(f"{text[:80]!r}: expected ':' and a port after ']'")
        port_text = rest[1:]
    else:
        host_text, sep, port_text = text.rpartition(":")
        if not sep:
            host_text, port_text = text, ""
        if ":" in host_text:
            raise ValueError(f"{text[:80]!r}: put an IPv6 address in brackets, [addr]:port")
        host = canonical_host(host_text)
    if not port_text:
        if default_port is None:
            raise ValueError(f"{text[:80]!r}: no port")
        return host, default_port
    return host, parse_port(port_text)


def parse_host_port(text: str) -> Addr:
    """A peer address ``host:port`` / ``[ipv6]:port`` with a port that must be present."""
    if not isinstance(text, str) or len(text) > MAX_HOSTNAME_CHARS + 8 or not text.isprintable():
        raise ValueError(f"{str(text)[:80]!r}: not a HOST:PORT address")
    return split_host_port(text)


def split_url(url: str, schemes: tuple[str, ...] = TRACKER_SCHEMES) -> TrackerUrl:
    """Split ``scheme://authority/target`` and check the scheme, host and port (not the target)."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or not scheme or not set(scheme) <= _SCHEME_CHARS:
        raise ValueError(f"{url[:80]!r} is not an absolute URL")
    if scheme not in schemes:
        raise ValueError(f"unsupported URL scheme {scheme[:20]!r} (expected {', '.join(schemes)})")
    end = len(rest)
    for c in "/?#":
        i = rest.find(c)
        if 0 <= i < end:
            end = i
    authority, target = rest[:end], rest[end:]
    target = target.partition("#")[0]
    if "@" in authority:
        raise ValueError("user names and passwords in tracker URLs are not supported")
    if not authority:
        raise ValueError(f"no host in {url[:80]!r}")
    host, port = split_host_port(authority, default_port=DEFAULT_PORTS.get(scheme))
    return TrackerUrl(scheme, host, port, target)


def _check_chars(url: str, max_chars: int) -> None:
    if not url:
        raise ValueError("empty URL")
    if len(url) > max_chars:
        raise ValueError(f"URL of {len(url)} characters (limit {max_chars})")
    for c in url:
        if c.isspace() or not c.isprintable():
            raise ValueError(f"URL contains the character {c!r}")


def parse_tracker_url(
    url: str, schemes: tuple[str, ...] = TRACKER_SCHEMES, *, max_chars: int = MAX_URL_CHARS
) -> TrackerUrl:
    """Validate a tracker URL from any outside source; ValueError says what is wrong."""
    if not isinstance(url, str):
        raise ValueError("a URL must be a string")
    _check_chars(url, max_chars)
    return split_url(url, schemes)


def is_tracker_url(url: str, schemes: tuple[str, ...] = TRACKER_SCHEMES) -> bool:
    """True if :func:`parse_tracker_url` accepts ``url``."""
    try:
        parse_tracker_url(url, schemes)
    except ValueError:
        return False
    return True


def resolve_redirect(base: str, location: str) -> str:
    """The absolute http(s) URL a ``Location`` header points to, relative to ``base``, validated."""
    location = location.strip(" \t")
    _check_chars(location, MAX_URL_CHARS)
    try:
        joined = urllib.parse.urljoin(base, location)
    except ValueError as e:  # "Invalid IPv6 URL" and friends
        raise ValueError(f"{location[:80]!r}: {e}") from None
    parse_tracker_url(joined, HTTP_SCHEMES)
    return joined


def is_ip(host: str) -> bool:
    """Is ``host`` an IP literal (IPv6 with or without brackets), not a name to resolve?"""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False
