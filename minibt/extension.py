"""BEP 10 extension protocol: the handshake we send, and what we keep from the peer's.

Pure functions over plain data.  In scope: our handshake dictionary ('m' with the extended
messages we support -- ut_pex (BEP 11) unless the torrent is private, ut_metadata (BEP 9) --
'metadata_size', 'v', 'reqq', 'p') and copying the peer's 'm',
'reqq', 'p' and 'v' into its :class:`~minibt.peer.PeerConnection`, bounded and type-checked
(the dictionary comes from the remote peer).  Out of scope: the extended messages themselves.
"""

from __future__ import annotations

from minibt.peer import PeerConnection

CLIENT_VERSION = b"minibt 0.1.0"  # BEP 10 'v'
MAX_PEER_REQQ = 2000  # convention: the largest 'reqq' of a peer we believe
MAX_CLIENT_NAME_BYTES = 64  # convention: how much of a peer's 'v' we keep
# What PeerConnection.ext keeps of the peer's handshake: BEP 21 'upload_only', BEP 6-era 'e', BEP 10
# 'yourip', 'p', 'reqq', 'v', BEP 9 'metadata_size'; byte strings up to MAX_KEPT_VALUE_BYTES.
KEPT_KEYS = frozenset((b"e", b"upload_only", b"yourip", b"p", b"reqq", b"v", b"metadata_size"))
MAX_KEPT_VALUE_BYTES = 64
# Our local extended-message ids (BEP 10: the peer sends us these ids; 0 would mean disabled).
LOCAL_UT_PEX_ID = 1
LOCAL_UT_METADATA_ID = 2


def our_handshake(
    *, reqq: int, listen_port: int | None, pex: bool = False, metadata: bool = False, metadata_size: int | None = None
) -> dict[bytes, object]:
    """Our extension handshake: ``reqq`` requests queued per peer, ``listen_port`` if we listen,
    ``ut_pex`` if ``pex`` (never for private torrents, BEP 27), ``ut_metadata`` if ``metadata``
    with ``metadata_size`` when we have the info dict (BEP 9)."""
    m: dict[bytes, int] = {}
    if pex:
        m[b"ut_pex"] = LOCAL_UT_PEX_ID
    if metadata:
        m[b"ut_metadata"] = LOCAL_UT_METADATA_ID
    hs: dict[bytes, object] = {b"m": m, b"v": CLIENT_VERSION, b"reqq": reqq}
    if metadata and metadata_size:
        hs[b"metadata_size"] = metadata_size
    if listen_port:
        hs[b"p"] = listen_port
    return hs


def apply_peer_handshake(peer: PeerConnection, d: dict[bytes, object]) -> None:
    """Keep what the peer's extension handshake ``d`` says; ignore entries of the wrong type."""
    # Only the scalars someone reads: the whole dict (up to EXT_HANDSHAKE_MAX_TOKENS) could be ~100x
    # its bencoded size in Python objects, per connection.
    peer.ext = {k: v for k, v in d.items() if k in KEPT_KEYS and (isinstance(v, int) or
                                                               (isinstance(v, bytes) and len(v) <= MAX_KEPT_VALUE_BYTES))}
    m = d.get(b"m")
    if isinstance(m, dict):
        peer.ext_ids = {
            k.decode("utf-8", "replace"): v for k, v in m.items() if isinstance(k, bytes) and isinstance(v, int)
        }
    reqq = d.get(b"reqq")
    if isinstance(reqq, int) and reqq > 0:
        peer.reqq = min(reqq, MAX_PEER_REQQ)
    p = d.get(b"p")
    if isinstance(p, int) and 0 < p < 65536:
        peer.listen_port = p
    v = d.get(b"v")
    if isinstance(v, bytes):
        peer.client_name = v[:MAX_CLIENT_NAME_BYTES].decode("utf-8", "replace")
