"""The loop's UDP socket I/O: batched reads with UDP GRO, batched sends with UDP GSO, and fallbacks.

Linux can hand several datagrams of one sender over in one system call each way:

* receive, ``UDP_GRO`` (Linux 5.0): the kernel may deliver a run of equal-sized datagrams from one
  source as one buffer, with a ``UDP_GRO`` control message giving the segment size (the last segment
  may be shorter).  :func:`split_gro` cuts such a buffer back into datagram views.  On loopback a run is
  only coalesced when its sender used GSO (minibt to minibt); on a NIC the driver's GRO does it.
* send, ``UDP_SEGMENT`` (Linux 4.18): one ``sendmsg`` carries up to 64 datagrams of one size to one
  address (the last may be shorter) and the kernel cuts them apart.  :func:`gso_runs` decides which
  consecutive datagrams may go together.

Where the socket option is missing (another OS, an old kernel) or a send with it fails
(EINVAL/ENOPROTOOPT/EIO, e.g. a device without checksum offload), that direction falls back to one
``recvfrom_into``/``sendto`` per datagram for the rest of the socket's life.  Which datagram goes to
which protocol is the loop's business (:mod:`minibt.loop`); the uTP machines only produce datagrams.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable, Sequence

from minibt.urls import Addr

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    from minibt.mmsg import BatchReader

    class Receiver(Protocol):
        def __call__(self, data: memoryview, addr: Addr, /, *, now: float) -> None: ...

    class BatchReceiver(Protocol):
        """The datagrams of one read, in order; each one's fault goes to ``on_error`` and the rest are handled."""

        def __call__(self, datas: Sequence[memoryview], addrs: Sequence[Addr], /, *, now: float,
                     on_error: Callable[[Addr, Exception], None]) -> None: ...

log = logging.getLogger(__name__)

SOL_UDP = 17  # IPPROTO_UDP (linux/udp.h)
UDP_SEGMENT = 103  # linux/udp.h: GSO segment size on send
UDP_GRO = 104  # linux/udp.h: coalesced receive, segment size in a cmsg
GSO_MAX_SEGMENTS = 64  # linux UDP_MAX_SEGMENTS
GSO_MAX_BYTES = 65507  # the largest IPv4 UDP payload: one sendmsg's datagrams together
GSO_OFF_ERRNOS = frozenset((errno.EINVAL, errno.ENOPROTOOPT, errno.EIO, errno.EOPNOTSUPP))
_GRO_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_SEG_STRUCT = struct.Struct("=H")  # UDP_SEGMENT value: the segment size, a native uint16
_GRO_STRUCT = struct.Struct("=i")  # UDP_GRO cmsg: the segment size, a native int


def split_gro(view: memoryview, n: int, seg: int) -> list[memoryview]:
    """The datagrams of a GRO buffer: ``view[:n]`` cut every ``seg`` bytes (the last may be shorter)."""
    if seg <= 0 or seg >= n:
        return [view[:n]]
    return [view[i : min(i + seg, n)] for i in range(0, n, seg)]


def gso_runs(sizes: Sequence[int], addrs: Sequence[Addr]) -> list[tuple[int, int]]:
    """Split datagrams (in send order) into ``[start, end)`` runs that one GSO ``sendmsg`` may carry.

    A run goes to one address, its datagrams all have the first one's size except the last, which may
    be shorter (it ends the run), at most :data:`GSO_MAX_SEGMENTS` datagrams and :data:`GSO_MAX_BYTES`
    bytes.  A run of one is an ordinary send.
    """
    runs: list[tuple[int, int]] = []
    i, count = 0, len(sizes)
    while i < count:
        seg, addr = sizes[i], addrs[i]
        j, total = i + 1, seg
        while j < count and j - i < GSO_MAX_SEGMENTS and addrs[j] == addr:
            size = sizes[j]
            if size > seg or total + size > GSO_MAX_BYTES or seg == 0:
                break
            total += size
            j += 1
            if size < seg:
                break  # a shorter one ends the run
        runs.append((i, j))
        i = j
    return runs


class UdpIO:
    """GRO reads and GSO sends on one non-blocking UDP socket (the loop's), with counters."""

    def __init__(self, sock: socket.socket, counters: dict[str, int], *, gro: bool = True, gso: bool = True,
                 batch: bool = True) -> None:
        """``counters`` (the loop's) gets udp_send_errors, udp_gro_buffers/_datagrams, udp_gso_sends/_datagrams.

        ``batch``: read with ``recvmmsg`` (:mod:`minibt.mmsg`) while uTP is on, where the OS has it.
        """
        self.sock = sock
        self.batch = batch and isinstance(sock, socket.socket)
        self._reader: BatchReader | None = None
        self.v6 = sock.family == socket.AF_INET6
        self.gro = gro and _GRO_CMSG_SPACE > 0 and _try_setsockopt(sock, UDP_GRO)
        self.gso = gso and hasattr(sock, "sendmsg")
        self.counters = counters
        for k in ("udp_send_errors", "udp_gro_buffers", "udp_gro_datagrams", "udp_gso_sends", "udp_gso_datagrams"):
            counters.setdefault(k, 0)

    # ------------------------------------------------------------------ receive

    def read(self, buf: bytearray, limit: int, on_utp: BatchReceiver | None, on_other: Receiver, now: float,
             on_error: Callable[[Addr, Exception], None]) -> None:
        """Read up to ``limit`` system calls' worth of datagrams into ``buf``.

        uTP datagrams (a version-1 type byte and a full header, as :func:`minibt.utp_codec.is_utp_datagram`)
        go to ``on_utp``, those of one system call together; anything else to ``on_other``, one call each.
        A handler's exception is ``on_error``'s and the reading goes on.  Each view is only valid during its
        call (the next read reuses ``buf``).
        """
        sock, view, v6, gro = self.sock, memoryview(buf), self.v6, self.gro
        recvfrom_into, recvmsg_into, space = sock.recvfrom_into, sock.recvmsg_into, _GRO_CMSG_SPACE
        hlen, utp_first = 0, frozenset[int]()
        if on_utp is not None:  # a TCP-only client never loads the uTP codec
            from minibt.utp_codec import HEADER_LEN, UTP_FIRST_BYTES

            hlen, utp_first = HEADER_LEN, UTP_FIRST_BYTES
            if self.batch:
                if self._reader is None:
                    from minibt.mmsg import open_reader

                    self._reader = open_reader(sock, slot_size=len(buf), gro=(SOL_UDP, UDP_GRO) if gro else None)
                    self.batch = self._reader is not None
                if self._reader is not None:
                    try:
                        self._reader.drain(limit, on_utp, hlen, utp_first, on_other, now, on_error, self.counters)
                    except OSError as e:  # the next readiness retries
                        log.debug("UDP recvmmsg failed: %s", e)
                    return
        for _ in range(limit):
            seg = 0
            try:
                if gro:
                    n, anc, _flags, addr = recvmsg_into((buf,), space)
                    if anc:
                        for level, typ, cdata in anc:
                            if level == SOL_UDP and typ == UDP_GRO and len(cdata) >= 4:
                                seg = _GRO_STRUCT.unpack_from(cdata)[0]
                else:
                    n, addr = recvfrom_into(buf)
            except OSError:  # BlockingIOError: drained; anything else: the next readiness retries
                break
            if v6:  # (host, port, flowinfo, scope_id), an IPv4-mapped host as plain IPv4
                ip = addr[0]
                src = (ip[7:] if ip.startswith("::ffff:") else ip, addr[1])
            else:
                src = addr  # already (host, port)
            if seg and seg < n:
                parts = split_gro(view, n, seg)
                self.counters["udp_gro_buffers"] += 1
                self.counters["udp_gro_datagrams"] += len(parts)
            else:
                parts = [view[:n]]
            for data in parts:
                try:  # one datagram: dropped, the loop goes on (STYLE.md section 13)
                    if on_utp is not None and len(data) >= hlen and data[0] in utp_first:
                        on_utp((data,), (src,), now=now, on_error=on_error)
                    else:
                        on_other(data, src, now=now)
                except Exception as e:
                    on_error(src, e)

    # ------------------------------------------------------------------ send

    def send_many(self, datagrams: Sequence[bytes], addrs: Sequence[Addr]) -> None:
        """Send datagrams (addresses already in the socket's form); a lost one is the sender's to retry."""
        if not self.gso or len(datagrams) < 2:
            for d, a in zip(datagrams, addrs, strict=True):
                self._sendto(d, a)
            return
        for i, j in gso_runs([len(d) for d in datagrams], addrs):
            if j - i == 1:
                self._sendto(datagrams[i], addrs[i])
            elif not self._send_gso(datagrams[i:j], addrs[i]):
                for k in range(i, j):
                    self._sendto(datagrams[k], addrs[k])

    def _send_gso(self, run: Sequence[bytes], addr: Addr) -> bool:
        """One sendmsg for a run; False if it must go datagram by datagram (GSO is then off for good)."""
        if not self.gso:
            return False
        try:
            self.sock.sendmsg(run, [(SOL_UDP, UDP_SEGMENT, _SEG_STRUCT.pack(len(run[0])))], 0, addr)
        except (BlockingIOError, InterruptedError):
            self.counters["udp_send_errors"] += len(run)  # kernel buffer full: uTP retransmits them
            return True
        except OSError as e:
            if e.errno in GSO_OFF_ERRNOS:
                log.info("UDP GSO unavailable on this socket (%s): one sendto per datagram from now on", e)
                self.gso = False
                return False
            self.counters["udp_send_errors"] += len(run)
            log.debug("UDP GSO send of %d datagrams to %s failed: %s", len(run), addr, e)
            return True
        self.counters["udp_gso_sends"] += 1
        self.counters["udp_gso_datagrams"] += len(run)
        return True

    def _sendto(self, data: bytes, addr: Addr) -> None:
        try:
            self.sock.sendto(data, addr)
        except OSError as e:  # BlockingIOError: kernel buffer full; uTP retransmits it
            self.counters["udp_send_errors"] += 1
            log.debug("UDP send to %s failed: %s", addr, e)


def _try_setsockopt(sock: socket.socket, opt: int) -> bool:
    try:
        sock.setsockopt(SOL_UDP, opt, 1)
    except (OSError, AttributeError):
        return False
    return True
