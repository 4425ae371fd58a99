"""Many datagrams per system call on the loop's UDP socket: ``recvmmsg(2)`` through ctypes (Linux).

Python's ``socket`` reads one datagram per call, and every call lets go of the GIL and takes it back.
A uTP download from a fast peer is a stream of ~1.4 KB datagrams (about 740,000 per GiB), so each one
cost a system call, a result tuple, a source address formatted as text, and often a GIL hand-off that
woke a hash thread.  :class:`BatchReader` asks the kernel for up to :data:`SLOTS` datagrams at once, in
one call (measured 2026-12-05, 1 GiB from libtorrent: 742,484 ``recvmsg`` and 146,373 ``futex`` calls
before, 24,499 ``recvmmsg`` and 91,721 ``futex`` after).  That call keeps the GIL (a ``PyDLL`` handle): with
``MSG_DONTWAIT`` it never blocks, and letting the GIL go for it handed the GIL to a hash thread that the
loop then had to wait for (2026-12-06, 1 GiB uTP downloads, 5 pairs: 3.61-3.67 CPU s before, 3.40-3.70
after, with less system time in each pair).

The datagrams land in an anonymous ``mmap`` of ``SLOTS`` slots of ``slot_size`` bytes: a page costs
memory only once a datagram has been written to it, so 64 KiB slots (room for a UDP GRO buffer) cost
about one page each while datagrams are MTU-sized.  Source addresses are decoded once per distinct
``sockaddr`` (a small cache), not once per datagram.  A datagram longer than its slot (``MSG_TRUNC``)
is counted and dropped, as the plain path would have cut it short.

Only used by :mod:`minibt.udpio` while uTP is on: a process that never speaks uTP reads the odd tracker
or DHT datagram with plain ``recvfrom_into`` and never loads ctypes.  :func:`open_reader` returns None
where ``recvmmsg`` is missing (another OS, a libc without it); the caller then reads one at a time.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import socket
import struct
from collections.abc import Callable, Sequence

from minibt.urls import Addr

SLOTS = 32  # datagrams per call: 32 x 1.4 KB, about what arrives between two loop turns at 300 MiB/s
MSG_DONTWAIT = 0x40  # linux/socket.h
MSG_TRUNC = 0x20
NAME_LEN = 32  # sizeof(struct sockaddr_in6) is 28, rounded up to whole 64-bit words; a sockaddr_in (16) fits too
ADDR_CACHE_MAX = 256  # distinct sources remembered; cleared when full (a scan cannot grow it)
_CMSG_HDR = socket.CMSG_LEN(0) if hasattr(socket, "CMSG_LEN") else 0  # cmsghdr size: level/type follow cmsg_len
_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_SIZE_T = ctypes.sizeof(ctypes.c_size_t)
_LEVEL_TYPE = struct.Struct("=ii")
_GRO_SEG = struct.Struct("=i")
_PORT = struct.Struct("!H")
_SCOPE = struct.Struct("=I")  # sin6_scope_id, host order
_SOFT_ERRNOS = frozenset((errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR))


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):  # struct msghdr (glibc; musl's padded ints lay out the same on little-endian)
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


# udpio.Receiver (data, addr, *, now) and udpio.BatchReceiver; not imported (udpio imports this module)
_Handler = Callable[..., None]
RecvMMsg = Callable[[int, int, int, int, None], int]


def _recvmmsg() -> RecvMMsg | None:
    try:
        fn = ctypes.PyDLL(None, use_errno=True).recvmmsg  # keeps the GIL: non-blocking (MSG_DONTWAIT)
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


class BatchReader:
    """Reads up to :data:`SLOTS` datagrams per ``recvmmsg`` call from one non-blocking UDP socket."""

    def __init__(self, fn: RecvMMsg, sock: socket.socket, *, slot_size: int, gro: tuple[int, int] | None,
                 slots: int = SLOTS) -> None:
        """``gro``: the (level, type) of the UDP GRO control message when the socket has GRO on, else None."""
        self._fn = fn
        self._sock = sock
        self._v6 = sock.family == socket.AF_INET6
        self._slots = slots
        self._slot = slot_size
        self._mem = mmap.mmap(-1, slots * slot_size, flags=mmap.MAP_PRIVATE)  # anonymous: no page until written
        self._anchor = ctypes.c_char.from_buffer(self._mem)  # pins the mapping while ctypes holds its address
        self._view = memoryview(self._mem)
        self._names = ctypes.create_string_buffer(slots * NAME_LEN)
        space = _CMSG_SPACE if gro else 0
        self._gro = gro
        self._control = ctypes.create_string_buffer(max(1, slots * space))
        self._iov = (_IoVec * slots)()
        self._hdrs = (_MMsgHdr * slots)()
        base, names, control = ctypes.addressof(self._anchor), ctypes.addressof(self._names), ctypes.addressof(self._control)
        for i in range(slots):
            self._iov[i].base, self._iov[i].len = base + i * slot_size, slot_size
            h = self._hdrs[i].hdr
            h.name, h.namelen = names + i * NAME_LEN, NAME_LEN
            h.iov, h.iovlen = ctypes.addressof(self._iov[i]), 1
            h.control, h.controllen = (control + i * space, space) if space else (None, 0)
        self._stride = ctypes.sizeof(_MMsgHdr)
        raw = memoryview(self._hdrs).cast("B")
        self._raw = raw
        self._pristine = bytes(raw)  # the kernel rewrites namelen, controllen, flags and len of each used entry
        self._u32 = raw.cast("I")
        self._sizes = raw.cast("L") if space else None  # size_t is unsigned long on Linux (LP64 and ILP32)
        self._len_at = (_MMsgHdr.len.offset) // 4
        self._namelen_at = (_MMsgHdr.hdr.offset + _MsgHdr.namelen.offset) // 4
        self._flags_at = (_MMsgHdr.hdr.offset + _MsgHdr.flags.offset) // 4
        self._controllen_at = (_MMsgHdr.hdr.offset + _MsgHdr.controllen.offset) // _SIZE_T
        self._names_view = memoryview(self._names).cast("B")
        # An address's cache key, read as 64-bit words: a sockaddr_in's family, port and address are its
        # first word (the rest is zero), a sockaddr_in6 takes all four words of its slot.
        self._q = self._names_view.cast("Q")
        self._control_view = memoryview(self._control).cast("B")
        self._space = space
        self._addrs: dict[object, Addr] = {}

    def drain(self, limit: int, on_utp: _Handler | None, hlen: int, utp_first: frozenset[int], on_other: _Handler,
              now: float, on_error: Callable[[Addr, Exception], None], counters: dict[str, int]) -> None:
        """Read up to ``limit`` datagrams (fewer when the socket runs dry) and route them as :meth:`UdpIO.read`:
        ``on_utp`` gets the uTP datagrams of each system call together.

        A handler's exception goes to ``on_error`` and the reading goes on.  OSError for a hard read error
        (nothing is lost: what was read before it has been delivered).  Each view is only valid during its
        handler call: the slots are reused.
        """
        fn, fd, hdrs, slots = self._fn, self._sock.fileno(), ctypes.addressof(self._hdrs), self._slots
        raw, pristine, stride = self._raw, self._pristine, self._stride
        u32, q, sizes, view, slot = self._u32, self._q, self._sizes, self._view, self._slot
        stride4, len_at, flags_at, namelen_at = stride // 4, self._len_at, self._flags_at, self._namelen_at
        strideN, clen_at, qn = stride // _SIZE_T, self._controllen_at, NAME_LEN // 8
        addrs, v6 = self._addrs, self._v6
        while limit > 0:
            want = min(limit, slots)
            raw[: want * stride] = pristine[: want * stride]  # the kernel rewrites namelen, controllen, flags, len
            n = fn(fd, hdrs, want, MSG_DONTWAIT, None)
            if n <= 0:
                if n == 0:
                    return
                err = ctypes.get_errno()
                if err in _SOFT_ERRNOS:
                    return
                raise OSError(err, f"recvmmsg: {errno.errorcode.get(err, err)}")
            limit -= n
            # Each entry's fields for the whole call at once (strided views), not a view index per datagram.
            lens = u32[len_at::stride4][:n].tolist()
            flags = u32[flags_at::stride4][:n].tolist()
            keys: Sequence[object]  # the address cache's keys (see __init__)
            if v6:
                keys = list(zip(*(q[k::qn][:n].tolist() for k in range(qn)), strict=True))
            else:
                keys = q[::qn][:n].tolist()
            cmsgs = sizes[clen_at::strideN][:n].tolist() if sizes is not None else None
            if (on_utp is not None and not any(flags) and (cmsgs is None or not any(cmsgs)) and min(lens) >= hlen
                    and len(set(keys)) == 1 and utp_first.issuperset(view[::slot][:n].tolist())):
                # A download's usual call: every datagram uTP and whole, from one sender, no GRO buffer.  What
                # the loop below does, each test made once for the whole call (first bytes: a strided view).
                src = addrs.get(keys[0])
                if src is None:
                    src = self._remember(keys[0], 0, u32[namelen_at])
                _deliver_utp([view[at : at + size] for at, size in zip(range(0, n * slot, slot), lens, strict=True)],
                             [src] * n, on_utp, now, on_error)
                if n < want:
                    return
                continue
            datas: list[memoryview] = []  # this call's uTP datagrams, handed over together (the slots are reused)
            srcs: list[Addr] = []
            start = -slot
            for i, size in enumerate(lens):
                start += slot
                if flags[i] & MSG_TRUNC:
                    counters["udp_dropped"] = counters.get("udp_dropped", 0) + 1  # longer than a slot
                    continue
                key = keys[i]
                src = addrs.get(key)
                if src is None:
                    src = self._remember(key, i, u32[i * stride4 + namelen_at])
                data = view[start : start + size]
                if cmsgs is not None and cmsgs[i]:
                    seg = self._gro_segment(i)
                    if seg and seg < len(data):
                        parts = [data[j : j + seg] for j in range(0, len(data), seg)]
                        counters["udp_gro_buffers"] += 1
                        counters["udp_gro_datagrams"] += len(parts)
                        for part in parts:
                            if on_utp is not None and len(part) >= hlen and part[0] in utp_first:
                                datas.append(part)
                                srcs.append(src)
                                continue
                            if datas:  # the order of arrival is kept across the two kinds
                                _deliver_utp(datas, srcs, on_utp, now, on_error)
                                datas, srcs = [], []
                            _deliver_other(part, src, on_other, now, on_error)
                        continue
                if on_utp is not None and size >= hlen and data[0] in utp_first:
                    datas.append(data)
                    srcs.append(src)
                    continue
                if datas:
                    _deliver_utp(datas, srcs, on_utp, now, on_error)
                    datas, srcs = [], []
                _deliver_other(data, src, on_other, now, on_error)
            if datas:
                _deliver_utp(datas, srcs, on_utp, now, on_error)
            if n < want:
                return  # drained for now: the selector says when more arrives

    def _gro_segment(self, i: int) -> int:
        assert self._sizes is not None
        clen = self._sizes[(i * self._stride) // _SIZE_T + self._controllen_at]
        if clen < _CMSG_HDR + 4:
            return 0
        at = i * self._space
        level, typ = _LEVEL_TYPE.unpack_from(self._control_view, at + _SIZE_T)
        if (level, typ) != self._gro:
            return 0
        return int(_GRO_SEG.unpack_from(self._control_view, at + _CMSG_HDR)[0])

    def _remember(self, key: object, i: int, namelen: int) -> Addr:
        addr = self._decode(bytes(self._names_view[i * NAME_LEN : i * NAME_LEN + min(namelen, NAME_LEN)]))
        if len(self._addrs) >= ADDR_CACHE_MAX:
            self._addrs.clear()
        self._addrs[key] = addr
        return addr

    def _decode(self, raw: bytes) -> Addr:
        """A sockaddr as the plain path gives it: (host, port), an IPv4-mapped IPv6 host as plain IPv4."""
        port = _PORT.unpack_from(raw, 2)[0]
        if not self._v6:
            return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
        if host.startswith("::ffff:") and "." in host:
            return (host[7:], port)
        scope = _SCOPE.unpack_from(raw, 24)[0] if len(raw) >= NAME_LEN else 0
        if scope:
            try:
                host = f"{host}%{socket.if_indextoname(scope)}"
            except OSError:
                host = f"{host}%{scope}"
        return (host, port)


def _deliver_other(data: memoryview, src: Addr, on_other: _Handler, now: float,
                   on_error: Callable[[Addr, Exception], None]) -> None:
    """A datagram that is not uTP to its handler; an exception is ``on_error``'s (STYLE.md section 13)."""
    try:
        on_other(data, src, now=now)
    except Exception as e:  # one datagram: dropped, the loop goes on
        on_error(src, e)


def _deliver_utp(datas: list[memoryview], srcs: list[Addr], on_utp: _Handler | None, now: float,
                 on_error: Callable[[Addr, Exception], None]) -> None:
    """uTP datagrams to their batch handler, which contains each one's faults itself (udpio.BatchReceiver);
    an exception out of it (a fault in the handler) costs the rest of the batch and is ``on_error``'s."""
    assert on_utp is not None
    try:
        on_utp(datas, srcs, now=now, on_error=on_error)
    except Exception as e:
        on_error(srcs[0], e)


def open_reader(sock: socket.socket, *, slot_size: int, gro: tuple[int, int] | None) -> BatchReader | None:
    """A :class:`BatchReader` for ``sock``, or None where ``recvmmsg`` is not available."""
    fn = _recvmmsg()
    if fn is None:
        return None
    try:
        return BatchReader(fn, sock, slot_size=slot_size, gro=gro)
    except (OSError, ValueError, BufferError):
        return None
