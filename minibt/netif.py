"""Where outgoing traffic leaves from: source address, SO_BINDTODEVICE and interface state.

Impure helper of loop.py and trackerio.py (and with them the only module allowed to import
``socket``): it sets options on sockets they created and asks the kernel about an interface; it
never sends or receives.  ``Source.reaches``, ``Source.from_bind``, ``is_ip`` and ``norm_ip`` are
pure.  Linux only (SO_BINDTODEVICE, SIOCGIFFLAGS; unprivileged SO_BINDTODEVICE needs Linux >= 5.7,
older kernels need CAP_NET_RAW).
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import socket
import struct
from dataclasses import dataclass

from minibt.ifwatch import IFNAMSIZ, LinkState

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

SIOCGIFFLAGS = 0x8913  # linux/sockios.h
IFF_UP = 0x1  # linux/if.h
IFF_RUNNING = 0x40


@dataclass(frozen=True, slots=True)
class Source:
    """The source address (None: the kernel picks) and device (None: any) of every socket."""

    ip: str | None = None
    interface: str | None = None

    @classmethod
    def from_bind(cls, bind: str, interface: str | None = None) -> Source:
        """``bind`` as given to --bind: 0.0.0.0 and :: mean "any address"."""
        addr = ipaddress.ip_address(bind)
        if addr.is_unspecified:
            return cls(None, interface)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            return cls(str(addr.ipv4_mapped), interface)
        return cls(str(addr), interface)

    @property
    def family(self) -> int | None:
        """AF_INET/AF_INET6 of a specific source address; None when any family may be used."""
        if self.ip is None:
            return None
        return socket.AF_INET6 if ":" in self.ip else socket.AF_INET

    def reaches(self, ip: str) -> bool:
        """Can a socket from this source talk to ``ip``? (A v4 source cannot reach a v6 address.)"""
        fam = self.family
        if fam is None:
            return True
        target = socket.AF_INET6 if ":" in ip and not ip.startswith("::ffff:") else socket.AF_INET
        return target == fam

    def prepare(self, s: socket.socket) -> None:
        """Bind an outgoing socket to the device and to (ip, 0) before connect(); raises OSError."""
        if self.interface is not None:
            bind_to_device(s, self.interface)
        if self.ip is not None and s.family == self.family:
            s.bind((self.ip, 0))


def resolve(host: str, port: int, kind: int) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for a worker thread.  An ASCII name goes as bytes: for a ``str`` Python encodes it
    with the ``idna`` codec, whose first use imports ``encodings.idna``, ``stringprep`` and ``unicodedata``
    (0.67 MiB of RSS, measured 2026-12-06) for names that need no encoding; a non-ASCII name still does."""
    return socket.getaddrinfo(host.encode("ascii") if host.isascii() else host, port, type=kind)


def norm_ip(ip: str) -> str:
    """An IPv4 address as a dual-stack socket reports it (``::ffff:1.2.3.4``) in its plain form."""
    if ip.startswith("::ffff:") and "." in ip:
        return ip[7:]
    return ip


def bind_to_device(s: socket.socket, name: str) -> None:
    """SO_BINDTODEVICE: the socket only sends and receives through ``name`` (ENODEV if it is gone)."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, name.encode())


def link_state(name: str) -> LinkState:
    """The interface's index and whether it is up and running (a few syscalls; call at most 1/s)."""
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return LinkState(None, False)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # an ioctl handle: never sends
            req = struct.pack(f"{IFNAMSIZ}sH", name.encode(), 0)
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req + bytes(40 - len(req)))
    except OSError:
        return LinkState(None, False)  # vanished between the two calls
    flags = struct.unpack_from("H", res, IFNAMSIZ)[0]
    return LinkState(index, bool(flags & IFF_UP) and bool(flags & IFF_RUNNING))


def open_listen_sockets(
    bind: str, port: int, interface: str | None, *, udp_buf: int
) -> tuple[socket.socket, socket.socket]:
    """The TCP listener and the one UDP socket (uTP, UDP trackers), both on ``bind`` and the same
    port when it is free for UDP too, bound to ``interface`` if given; non-blocking.  Raises OSError."""
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    us: socket.socket | None = None
    try:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if interface is not None:
            bind_to_device(ls, interface)
        ls.bind((bind, port))
        ls.listen(128)
        ls.setblocking(False)
        us = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            us.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if interface is not None:
            bind_to_device(us, interface)
        try:
            us.bind((bind, ls.getsockname()[1]))
        except OSError:
            us.bind((bind, 0))
        us.setblocking(False)
    except BaseException:
        ls.close()
        if us is not None:
            us.close()
        raise
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            us.setsockopt(socket.SOL_SOCKET, opt, udp_buf)
        except OSError as e:
            log.warning("cannot set UDP socket buffer: %s", e)
    return ls, us


def tune_tcp(s: socket.socket, buf_bytes: int) -> None:
    """TCP_NODELAY and enlarged kernel buffers for a peer connection (best effort)."""
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buf_bytes)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buf_bytes)
    except OSError:
        pass


# Linux ip(7)/ipv6(7): IP_MTU_DISCOVER / IPV6_MTU_DISCOVER; PMTUDISC_PROBE sets DF and ignores the cached
# path MTU (what an MTU probe needs); other datagrams keep the socket's default (fragment when needed).
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", None)
IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", None)
PMTUDISC_PROBE = 3


def send_probe(sock: socket.socket, dgram: bytes, addr: tuple[str, int]) -> None:
    """sendto() with the don't-fragment bit set for this one datagram; raises OSError (EMSGSIZE)."""
    opts = []
    if IP_MTU_DISCOVER is not None:
        opts.append((socket.IPPROTO_IP, IP_MTU_DISCOVER))
    if sock.family == socket.AF_INET6 and IPV6_MTU_DISCOVER is not None:
        opts.append((socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER))
    saved = []
    for level, opt in opts:
        try:
            saved.append((level, opt, sock.getsockopt(level, opt)))
            sock.setsockopt(level, opt, PMTUDISC_PROBE)
        except OSError:
            pass
    try:
        sock.sendto(dgram, addr)
    finally:
        for level, opt, value in saved:
            try:
                sock.setsockopt(level, opt, value)
            except OSError:
                pass
