"""SHA-1 (piece checks, info-hashes, MSE keys, DHT tokens) from a C library called directly.

hashlib would do, but importing its C module ``_hashlib`` initialises OpenSSL as a whole (its
configuration file, error strings, the provider and algorithm tables): on this project's x86-64 VM
that touched 3.5 MiB of pages (measured with /proc/self/status, 2026-12-06), a tenth of a download's
peak RSS.  So minibt calls a SHA-1 of its own choosing through ctypes, from one of two libraries that
Debian and Raspberry Pi OS always install:

- ``nettle`` (libnettle8, which apt itself needs through GnuTLS): ``nettle_sha1_init/update/digest``.
  Loading it and hashing cost 0.6 MiB of RSS here, against 1.9 MiB for libcrypto, whose relocated
  tables alone take 0.4 MiB of private memory.  Its builds pick the CPU's SHA instructions at run
  time (SHA-NI on x86-64 from nettle 3.5; the ARMv8 crypto extensions of a Pi 5 from 3.8): 2.0 GB/s
  here against libcrypto's 2.1.  Without those instructions nettle runs portable code, slower than
  OpenSSL's hand-written assembly for the same CPU.
- ``libcrypto`` (libssl3, which python3 depends on): ``SHA1_Init/Update/Final``, which need none of
  OpenSSL's initialisation.  OpenSSL's assembly for every CPU, picked by ``OPENSSL_cpuid_setup`` in
  the library's constructor.

nettle is tried first where the CPU has SHA-1 instructions (``sha_ni`` among the x86 flags, ``sha1``
among the ARM features of /proc/cpuinfo) and nettle is 3.8 or later: less memory at the same speed.
Elsewhere (a Raspberry Pi 4's Cortex-A72 has no crypto extensions) libcrypto is tried first: CPU
decides how fast a Pi downloads.  Each back end hashes published test vectors before it is used;
where neither loads or passes, :func:`sha1` is ``hashlib.sha1``, imported then.

``SHA1_Update``/``nettle_sha1_update`` let the GIL go (ctypes does, for a ``CDLL``), so the hash
threads run beside the loop; the init and final calls, well under a microsecond, keep it (the same
library through a ``PyDLL`` handle), so a hash thread does not hand the GIL over and wait for it
twice more a piece.  :func:`library` is the loaded library, which ``rc4.py`` (RC4 for MSE/PE) uses
too, so a process maps one of them.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    class Hash(Protocol):
        """A running SHA-1: hashlib's ``sha1`` object, as far as minibt uses it."""

        def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

        def digest(self) -> bytes:
            """The digest of everything so far; the object can go on taking data."""
            ...

        def hexdigest(self) -> str: ...

LIBCRYPTO_NAMES = ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", "libcrypto.dylib")
NETTLE_NAMES = ("libnettle.so.8", "libnettle.so", "libnettle.8.dylib", "libnettle.dylib")
NETTLE_MIN_VERSION = (3, 8)  # the first with the ARMv8 SHA-1 instructions in its run-time choice
CPUINFO = "/proc/cpuinfo"
_CTX_BYTES = 128  # sizeof(SHA_CTX) is 96 (5 + 2 + 16 + 1 ints), nettle's sha1_ctx 96: room to spare
_VECTORS = (  # FIPS 180-2 appendix A.1 and A.2
    (b"abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
)


def cpu_has_sha1(path: str = CPUINFO) -> bool:
    """The CPU has SHA-1 instructions, from the first processor in /proc/cpuinfo (False if unreadable)."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 16)
    except OSError:
        return False
    for line in text.split(b"\n\n", 1)[0].splitlines():
        key, _, value = line.partition(b":")
        if key.strip() in (b"flags", b"Features"):
            words = value.split()
            return b"sha_ni" in words or b"sha1" in words
    return False


_libs: dict[str, Any] = {}  # "nettle" / "libcrypto" -> the CDLL, or None once looked for and not found


def _load(kind: str) -> Any:
    if kind not in _libs:
        import ctypes

        _libs[kind] = None
        for name in NETTLE_NAMES if kind == "nettle" else LIBCRYPTO_NAMES:
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            if kind == "nettle" and not _nettle_recent(lib):
                break
            _libs[kind] = lib
            break
    return _libs[kind]


def _nettle_recent(lib: Any) -> bool:
    try:
        version = (lib.nettle_version_major(), lib.nettle_version_minor())
    except AttributeError:  # before nettle 3.1
        return False
    return bool(version >= NETTLE_MIN_VERSION)


def libcrypto() -> Any:
    """OpenSSL's libcrypto through ctypes (loaded once), or None where there is none to load."""
    return _load("libcrypto")


def libnettle() -> Any:
    """nettle 3.8 or later through ctypes (loaded once), or None where there is none (or an older one)."""
    return _load("nettle")


class _Api:
    """One library's three SHA-1 functions and the ctypes helpers the hash objects call."""

    __slots__ = ("buffer", "char", "final", "init", "kind", "update")

    def __init__(self, kind: str, lib: Any) -> None:
        import ctypes

        held = ctypes.PyDLL(lib._name, handle=lib._handle)  # the same library; its calls keep the GIL
        vp, size = ctypes.c_void_p, ctypes.c_size_t
        if kind == "nettle":
            self.init, self.update, self.final = held.nettle_sha1_init, lib.nettle_sha1_update, held.nettle_sha1_digest
            self.init.argtypes = [vp]
            self.update.argtypes = [vp, size, vp]
            self.final.argtypes = [vp, size, vp]
            self.init.restype = self.update.restype = self.final.restype = None
        else:
            self.init, self.update, self.final = held.SHA1_Init, lib.SHA1_Update, held.SHA1_Final
            self.init.argtypes = [vp]
            self.update.argtypes = [vp, vp, size]
            self.final.argtypes = [vp, vp]
            self.init.restype = self.update.restype = self.final.restype = ctypes.c_int
        self.kind = kind
        self.buffer = ctypes.create_string_buffer
        self.char = ctypes.c_char


def _make_class(api: _Api) -> type:
    """A hash class bound to ``api``: SHA-1 on a private context buffer."""
    nettle = api.kind == "nettle"
    buffer, char, init, update, final = api.buffer, api.char, api.init, api.update, api.final

    class CtypesSha1:
        __slots__ = ("_ctx",)

        def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
            self._ctx = buffer(_CTX_BYTES)
            init(self._ctx)
            if len(data):
                self.update(data)

        def update(self, data: bytes | bytearray | memoryview, /) -> None:
            if isinstance(data, bytes):
                ptr: Any = data
                n = len(data)
            else:
                view = data if isinstance(data, memoryview) else memoryview(data)
                n = view.nbytes
                if not n:
                    return
                if view.readonly or not view.c_contiguous:
                    ptr = bytes(view)  # rare (every caller passes bytes or a writable buffer)
                else:
                    ptr = (char * n).from_buffer(view)
            if nettle:
                update(self._ctx, n, ptr)
            else:
                update(self._ctx, ptr, n)
            del ptr  # release the export

        def digest(self) -> bytes:
            ctx = buffer(self._ctx.raw)  # both finals end (or reset) a context: finish a copy, as hashlib does
            out = buffer(20)
            if nettle:
                final(ctx, 20, out)
            else:
                final(out, ctx)
            raw: bytes = out.raw
            return raw[:20]

        def hexdigest(self) -> str:
            return self.digest().hex()

    CtypesSha1.__qualname__ = CtypesSha1.__name__ = f"{api.kind.capitalize()}Sha1"
    return CtypesSha1


def _passes(factory: Any) -> bool:
    """The vectors, whole, split and through a writable view, and digest() not ending the hash."""
    for data, want in _VECTORS:
        h = factory(data[:1])
        h.update(memoryview(bytearray(data[1:5])))
        first = h.digest()
        h.update(bytearray(data[5:]))
        if factory(data).hexdigest() != want or h.hexdigest() != want or first != factory(data[:5]).digest():
            return False
    return True


def hash_class(kind: str) -> Any:
    """The hash class of back end ``kind`` ("nettle" or "libcrypto") if it loads and passes, else None."""
    lib = _load(kind)
    if lib is None:
        return None
    try:
        api = _Api(kind, lib)
    except AttributeError:  # a library built without these functions (OpenSSL's are deprecated)
        return None
    cls = _make_class(api)
    return cls if _passes(cls) else None


def preference() -> tuple[str, str]:
    """The order the back ends are tried in on this machine (see the module docstring)."""
    if sys.platform.startswith("linux") and cpu_has_sha1():
        return ("nettle", "libcrypto")
    return ("libcrypto", "nettle")


_factory: Any = None  # data -> Hash, chosen on first use
_kind = ""  # its name


def _choose() -> Any:
    global _kind
    for kind in preference():
        cls = hash_class(kind)
        if cls is not None:
            _kind = kind
            return cls
    import hashlib

    _kind = "hashlib"
    return hashlib.sha1


def implementation() -> str:
    """Which SHA-1 this process uses: "nettle", "libcrypto" or "hashlib" (chosen on first use)."""
    sha1()
    return _kind


def library() -> tuple[str, Any] | None:
    """(kind, CDLL) of the library SHA-1 uses, or None when it is hashlib's (for rc4.py)."""
    sha1()
    return (_kind, _libs[_kind]) if _kind in _libs else None


def sha1(data: bytes | bytearray | memoryview = b"") -> Hash:
    """A new SHA-1, fed ``data``: the drop-in for ``hashlib.sha1``."""
    global _factory
    if _factory is None:
        _factory = _choose()
    h: Hash = _factory(data)
    return h
