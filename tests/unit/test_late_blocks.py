"""Blocks we cancelled that come anyway (download.py ``Downloader._cancel``): a peer on a slow link has the
blocks it was asked for in its socket buffer or on the wire when our cancel reaches it, so they still
arrive.  While nobody else has delivered them they are taken like requested blocks (not counted as
waste, no second request); a block already received, or one never asked of that peer, stays waste."""

from __future__ import annotations

import struct
from pathlib import Path

from minibt import download
from minibt.wire_codec import BLOCK_LEN
from tests.unit.test_block_runs import Remote


def test_cancelled_blocks_that_come_anyway_are_taken_and_the_download_completes(tmp_path: Path) -> None:
    r = Remote(tmp_path)
    asked = r.requests()
    assert len(asked) >= 4
    r.now += download.SNUB_TIMEOUT_S + 1
    r.s.tick(now=r.now)
    again = r.requests()  # the snubbed peer gets one request back; the rest were cancelled
    assert r.t.peers[r.cid].snubbed and len(again) == 1
    late = [q for q in asked if q not in again]
    before, received = r.t.stats.wasted, r.t.picker.stats()["blocks_received"]
    r.send(b"".join(r.piece_msg(*q) for q in late))  # they were on their way
    assert r.t.stats.wasted == before
    assert r.t.picker.stats()["blocks_received"] == received + len(late)
    assert not r.t.peers[r.cid].snubbed  # it sends again
    r.send(r.piece_msg(*late[0]))  # a second copy: nothing to take
    assert r.t.stats.wasted == before + BLOCK_LEN
    r.send(struct.pack(">IBI", 5, 4, 5))  # Have 5: the piece it lacked
    r.finish(again, never=frozenset(late))  # the download completes; none of the late blocks asked again
    assert r.t.stats.wasted == before + BLOCK_LEN


def test_only_blocks_cancelled_at_that_peer_are_taken_late(tmp_path: Path) -> None:
    r = Remote(tmp_path)
    asked = r.requests()
    r.now += download.SNUB_TIMEOUT_S + 1
    r.s.tick(now=r.now)
    again = r.requests()
    late = [q for q in asked if q not in again]
    cancelled = r.t.download._cancelled
    assert {(r.cid, i, b) for i, b, _ in late} <= set(cancelled)
    del cancelled[(r.cid, *late[0][:2])]  # as if never asked of this peer
    before = r.t.stats.wasted
    r.send(r.piece_msg(*late[0]) + r.piece_msg(*late[1]))  # one read: nothing is asked again in between
    assert r.t.stats.wasted == before + BLOCK_LEN  # the first only


def test_the_blocks_peers_may_still_send_after_cancels_are_bounded_for_all_peers_together(tmp_path: Path) -> None:
    r = Remote(tmp_path)
    cancelled = r.t.download._cancelled
    for k in range(download.CANCELLED_KEPT + 10):
        cancelled[k, 0, 0] = None  # other peers' (gone since)
    asked = r.requests()
    r.now += download.SNUB_TIMEOUT_S + 1
    r.s.tick(now=r.now)
    assert len(cancelled) == download.CANCELLED_KEPT
    assert (0, 0, 0) not in cancelled  # the oldest went first
    assert (r.cid, *asked[-1][:2]) in cancelled
