from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from minibt.extension import (
    CLIENT_VERSION,
    MAX_CLIENT_NAME_BYTES,
    MAX_PEER_REQQ,
    apply_peer_handshake,
    our_handshake,
)
from minibt.handshake import Handshake
from minibt.peer import PeerConnection, PeerSource


def conn() -> PeerConnection:
    hs = Handshake(peer_id=bytes(20), reserved=bytes(8), info_hash=None, now=0.0)
    return PeerConnection(1, ("192.0.2.1", 6881), outgoing=True, source=PeerSource.TRACKER, handshake=hs, now=0.0)


def test_our_handshake_names_port_only_when_listening() -> None:
    assert our_handshake(reqq=500, listen_port=6881) == {b"m": {}, b"v": CLIENT_VERSION, b"reqq": 500, b"p": 6881}
    assert b"p" not in our_handshake(reqq=500, listen_port=0)
    assert b"p" not in our_handshake(reqq=500, listen_port=None)


def test_peer_handshake_is_kept_within_bounds() -> None:
    c = conn()
    d: dict[bytes, object] = {
        b"m": {b"ut_pex": 1, b"ut_metadata": 3, b"bad": b"x", 5: 2},
        b"reqq": 10**9,
        b"p": 51413,
        b"v": b"\xce\xbcTorrent 3.6" + b"x" * 100,
    }
    apply_peer_handshake(c, d)
    assert c.ext == {b"reqq": 10**9, b"p": 51413}  # 'm' is in ext_ids; a 112-byte 'v' is over the kept size
    assert c.ext_ids == {"ut_pex": 1, "ut_metadata": 3}
    assert c.reqq == MAX_PEER_REQQ and c.listen_port == 51413
    assert c.client_name.startswith("\u03bcTorrent 3.6") and len(c.client_name.encode()) <= MAX_CLIENT_NAME_BYTES


def test_only_a_bounded_part_of_the_peers_extension_names_is_kept() -> None:
    from minibt.extension import _SPOKEN, MAX_OTHER_EXT_NAMES
    from minibt.holepunch import HP_EXT_NAME
    from minibt.metadata import METADATA_EXT_NAME
    from minibt.pex import PEX_EXT_NAME

    assert _SPOKEN == {PEX_EXT_NAME, METADATA_EXT_NAME, HP_EXT_NAME}
    c = conn()
    m: dict[bytes, object] = {b"x%d" % i: i for i in range(4700)}  # a 32 KiB handshake of made-up names
    m |= {b"ut_holepunch": 4, b"ut_metadata": 3, b"ut_pex": 1, b"n" * 65: 9}
    apply_peer_handshake(c, {b"m": m})
    assert {k: c.ext_ids[k] for k in ("ut_pex", "ut_metadata", "ut_holepunch")} == {"ut_pex": 1, "ut_metadata": 3,
                                                                                  "ut_holepunch": 4}
    assert len(c.ext_ids) == 3 + MAX_OTHER_EXT_NAMES and "x0" in c.ext_ids and "n" * 65 not in c.ext_ids


def test_out_of_range_values_change_nothing() -> None:
    c = conn()
    before = (c.reqq, c.listen_port, c.client_name, c.ext_ids)
    apply_peer_handshake(c, {b"m": [1], b"reqq": 0, b"p": 65536, b"v": 7})
    apply_peer_handshake(c, {b"reqq": -5, b"p": 0})
    assert (c.reqq, c.listen_port, c.client_name, c.ext_ids) == before


values = st.recursive(
    st.none() | st.integers() | st.binary(max_size=80) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.binary(max_size=8) | st.integers(), inner, max_size=4),
    max_leaves=10,
)


@given(st.dictionaries(st.sampled_from([b"m", b"reqq", b"p", b"v", b"x"]), values))
def test_any_peer_handshake_is_accepted_without_error(d: dict[bytes, object]) -> None:
    c = conn()
    apply_peer_handshake(c, d)
    assert 0 < c.reqq <= MAX_PEER_REQQ
    assert c.listen_port is None or 0 < c.listen_port < 65536
    assert all(isinstance(k, str) and isinstance(v, int) for k, v in c.ext_ids.items())


def test_our_handshake_offers_pex_and_metadata_only_when_asked() -> None:
    from minibt.extension import LOCAL_UT_METADATA_ID, LOCAL_UT_PEX_ID

    hs = our_handshake(reqq=500, listen_port=6881, pex=True, metadata=True, metadata_size=1234)
    assert hs[b"m"] == {b"ut_pex": LOCAL_UT_PEX_ID, b"ut_metadata": LOCAL_UT_METADATA_ID}
    assert hs[b"metadata_size"] == 1234
    private = our_handshake(reqq=500, listen_port=6881, pex=False, metadata=True, metadata_size=1234)
    assert private[b"m"] == {b"ut_metadata": LOCAL_UT_METADATA_ID}  # BEP 27: no ut_pex
    fetching = our_handshake(reqq=500, listen_port=None, metadata=True)
    assert b"metadata_size" not in fetching  # BEP 9: only when we have the metadata


def test_the_metadata_server_is_made_at_first_use_and_does_not_serve_info_over_the_limit(monkeypatch) -> None:
    """ExtensionRouter makes its ut_metadata server at the first use (issue 15: metadata.py is not loaded for
    every torrent); info bytes longer than a peer may take are not served: a reject, not a failed torrent."""
    import minibt.metadata as md
    from minibt.extension import ExtensionRouter

    info = b"d4:name5:hello12:piece lengthi16384ee"
    served = ExtensionRouter(peers={}, info_bytes=info, private=False, holepunch=None)  # type: ignore[arg-type]
    assert served._metadata is None
    msg, data = md.decode_metadata_msg(served.metadata.on_request(1, 0, now=0.0))
    assert (msg.msg_type, msg.total_size, data) == (md.MSG_DATA, len(info), info)
    assert served.metadata is served.metadata and served.metadata.stats()["served"] == 1  # one server, kept
    monkeypatch.setattr(md, "LIBTORRENT_MAX_METADATA_BYTES", len(info) - 1)
    too_long = ExtensionRouter(peers={}, info_bytes=info, private=False, holepunch=None)  # type: ignore[arg-type]
    msg, data = md.decode_metadata_msg(too_long.metadata.on_request(1, 0, now=0.0))
    assert (msg.msg_type, data) == (md.MSG_REJECT, b"")
