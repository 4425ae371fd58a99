"""Hostile peers on loopback: minibt disconnects them and still completes (or keeps serving) honest transfers.

Downloading: minibt (in-process ``Client``, so ``session.closed_log`` and ``torrent.banned`` can be
inspected) is given an evil peer (``evil_peer.EvilPeer`` on 127.0.0.2) and an honest ``minibt seed``
subprocess (127.0.0.1).  Seeding: minibt seeds in-process while an evil leecher dials it from 127.0.0.2
and an honest ``minibt download`` subprocess leeches.  PROTOCOL.md 7.11: the evil peer sits on its own
loopback address so banning it cannot ban the honest peers.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from clients import Client as ProcessClient
from clients import LibtorrentPeer, running
from evil_peer import EvilPeer, Mode
from helpers import run_client_until

from minibt.client import Client
from minibt.errors import CloseReason
from minibt.metainfo import Metainfo, create_torrent, load_metainfo
from minibt.mse import MseFailure
from minibt.settings import TorrentState
from minibt.torrent import Torrent

pytestmark = pytest.mark.integration

HONEST_HOST = "127.0.0.1"
EVIL_HOST = "127.0.0.2"
PIECE_LEN = 32 * 1024
PAYLOAD_LEN = 4 * 1024 * 1024 + 12345  # 129 pieces: a short last piece and 7 spare bitfield bits
TEST_DEADLINE_S = 40.0
PEER_LOG_WAIT_S = 5.0  # the evil peer's thread notices a close a moment after minibt's loop did
R = CloseReason
ANY_WIRE_ERROR = frozenset({R.MESSAGE_TOO_LARGE, R.MALFORMED_MESSAGE, R.PROTOCOL_VIOLATION})


# --------------------------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Swarm:
    payload: bytes
    seed_dir: Path  # holds payload.bin
    torrent_path: Path
    meta: Metainfo


@pytest.fixture
def swarm(tmp_path: Path) -> Swarm:
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    payload = random.Random(20240611).randbytes(PAYLOAD_LEN)
    (seed_dir / "payload.bin").write_bytes(payload)
    torrent_path = tmp_path / "payload.torrent"
    torrent_path.write_bytes(create_torrent(str(seed_dir / "payload.bin"), trackers=[], piece_length=PIECE_LEN))
    meta = load_metainfo(str(torrent_path))
    assert meta.num_pieces % 8, "the spare-bits case needs a piece count that is not a multiple of 8"
    return Swarm(payload, seed_dir, torrent_path, meta)


class MinibtProcess(ProcessClient):
    """``python -m minibt ...`` as a child process (stderr in its log), stopped by PID."""

    name = "minibt"

    def __init__(self, workdir: Path, args: list[str], *, wait_port: bool) -> None:
        super().__init__(workdir)
        self.args = args
        self.wait_port = wait_port
        self._port = 0

    def _launch(self) -> None:
        self._spawn([sys.executable, "-m", "minibt", *self.args])

    def _wait_ready(self) -> None:
        if not self.wait_port:
            return

        def listening() -> bool:
            m = re.search(r"listening on port (\d+)", self.log_tail())
            if m:
                self._port = int(m.group(1))
            return m is not None

        self.wait_until(listening, 20.0, "'listening on port' on stderr")
        # A seed refuses peers (HASH_CHECKING) until its check is done; -v logs the end of the check.
        self.wait_until(lambda: "check done" in self.log_tail(), 20.0, "the seed's piece check")

    @property
    def port(self) -> int:
        return self._port


def honest_seeder(tmp_path: Path, swarm: Swarm) -> MinibtProcess:
    return MinibtProcess(
        tmp_path / "honest-seeder",
        ["seed", str(swarm.torrent_path), "--dir", str(swarm.seed_dir), "--port", "0", "--bind", HONEST_HOST,
         "--state-dir", str(tmp_path / "honest-seeder" / "state"), "--quiet", "-v"],
        wait_port=True,
    )


@contextlib.contextmanager
def in_process_client(tmp_path: Path) -> Iterator[Client]:
    client = Client(bind=HONEST_HOST, port=0, state_dir=str(tmp_path / "state"))
    try:
        yield client
    finally:
        client.close()


def evil_for(swarm: Swarm, mode: Mode, *, role: str = "seed") -> EvilPeer:
    m = swarm.meta
    return EvilPeer(info_hash=m.info_hash, num_pieces=m.num_pieces, piece_length=m.piece_length,
                    total_length=m.total_length, mode=mode, payload=swarm.payload, host=EVIL_HOST, role=role,
                    extension=mode is Mode.EXT_HANDSHAKE_SEGMENT)


# --------------------------------------------------------------------------------------------- helpers


def closes_of(client: Client, ip: str) -> list[tuple[int, tuple[str, int], CloseReason, str]]:
    """Closes of connections with ``ip``, except our MSE dial that a plaintext-only peer answered with
    its BT handshake (the default policy 'preferred' then redials it in plaintext at once)."""
    return [c for c in client.session.closed_log if c[1][0] == ip and c[3] != MseFailure.PLAINTEXT_ANSWER]


def done_downloading(t: Torrent) -> bool:
    return t.complete and t.state is TorrentState.SEEDING


def assert_same_payload(path: Path, payload: bytes) -> None:
    data = path.read_bytes()
    assert len(data) == len(payload) and data == payload, f"{path} differs from the seeded payload"


def assert_evil_closed(client: Client, reasons: frozenset[CloseReason], detail: str) -> None:
    """Every close of an evil connection so far had an expected reason and detail."""
    closes = closes_of(client, EVIL_HOST)
    assert closes
    for c in closes:
        assert c[2] in reasons and re.search(detail, c[3]), f"closed as {c}, expected {set(reasons)} /{detail}/"


def assert_evil_saw_close(evil: EvilPeer) -> None:
    """The evil peer's own log agrees: minibt (not the evil peer) ended a connection."""
    ok = evil.wait_for(lambda recs: any(r.closed_by_remote for r in recs), PEER_LOG_WAIT_S)
    assert ok, f"evil peer never saw minibt close the connection: {evil.records}"


def assert_honest_untouched(client: Client, t: Torrent, allowed: frozenset[CloseReason]) -> None:
    bad = [c for c in closes_of(client, HONEST_HOST) if c[2] not in allowed]
    assert not bad, f"honest connections closed for the wrong reason: {bad}"
    assert HONEST_HOST not in t.banned


# --------------------------------------------------------------------------------------------- downloading

# mode -> (the close reasons allowed, a regex the close detail must match)
Case = tuple[frozenset[CloseReason], str]
DOWNLOAD_CASES: dict[Mode, Case] = {
    Mode.GARBAGE: (ANY_WIRE_ERROR, ""),
    Mode.HUGE_LENGTH: (frozenset({R.MESSAGE_TOO_LARGE}), r"length prefix 2147483648 "),
    Mode.HUGE_PIECE: (frozenset({R.MESSAGE_TOO_LARGE}), r"length prefix 1048585 "),
    Mode.BAD_HAVE: (frozenset({R.PROTOCOL_VIOLATION}), r"have index \d+ >="),
    Mode.BAD_REQUEST: (frozenset({R.PROTOCOL_VIOLATION}), r"request index \d+ >="),
    Mode.BAD_PIECE: (frozenset({R.PROTOCOL_VIOLATION}), r"piece index \d+ >="),
    Mode.SPARE_BITS: (frozenset({R.MALFORMED_MESSAGE}), r"spare bits"),
    Mode.FAST_NOT_NEGOTIATED: (frozenset({R.PROTOCOL_VIOLATION}), r"have_all without the fast extension"),
    Mode.BAD_PSTR: (frozenset({R.BAD_HANDSHAKE}), r"pstr"),
    Mode.WRONG_INFO_HASH: (frozenset({R.INFO_HASH_MISMATCH}), r"info-hash"),
    Mode.EXT_HANDSHAKE_SEGMENT: (frozenset({R.MALFORMED_MESSAGE}), r"extension handshake is not valid bencode"),
}


@pytest.mark.parametrize("mode", list(DOWNLOAD_CASES), ids=lambda m: m.value)
def test_download_completes_and_evil_seed_is_disconnected(mode: Mode, tmp_path: Path, swarm: Swarm) -> None:
    deadline = time.monotonic() + TEST_DEADLINE_S
    expected, detail = DOWNLOAD_CASES[mode]
    seeder = honest_seeder(tmp_path, swarm)
    with running(seeder), evil_for(swarm, mode) as evil, in_process_client(tmp_path) as client:
        evil_addr = evil.listen()
        dl = tmp_path / "dl"
        # The evil peer goes first, so minibt meets it before the honest seeder has sent everything.
        t = client.add(swarm.meta, str(dl), mode="download", peers=[evil_addr, (HONEST_HOST, seeder.port)])
        run_client_until(client, lambda: done_downloading(t) and bool(closes_of(client, EVIL_HOST)),
                  f"download complete and {mode.value} peer disconnected", deadline,
                  lambda: f"evil records: {evil.records}\n{seeder.log_tail()}")
        assert_evil_closed(client, expected, detail)
        assert_evil_saw_close(evil)
        if mode not in (Mode.BAD_PSTR, Mode.WRONG_INFO_HASH):
            assert any(r.handshake_at is not None for r in evil.records), "the misbehaviour came after a handshake"
        assert_honest_untouched(client, t, frozenset({R.BOTH_SEEDS}))
        st = t.status(client.clock.now())
        assert st["hash_failures"] == 0 and st["state"] == "seeding"
    assert_same_payload(dl / "payload.bin", swarm.payload)


def test_download_from_liar_bans_it_and_completes_from_honest_seed(tmp_path: Path, swarm: Swarm) -> None:
    deadline = time.monotonic() + TEST_DEADLINE_S
    seeder = honest_seeder(tmp_path, swarm)
    with running(seeder), evil_for(swarm, Mode.LIAR) as liar, in_process_client(tmp_path) as client:
        liar_addr = liar.listen()
        dl = tmp_path / "dl"
        t = client.add(swarm.meta, str(dl), mode="download", peers=[liar_addr, (HONEST_HOST, seeder.port)])
        run_client_until(client, lambda: done_downloading(t) and EVIL_HOST in t.banned,
                  "download complete and the liar banned", deadline,
                  lambda: f"status: {t.status(client.clock.now())}\nliar: {liar.records}")
        st = t.status(client.clock.now())
        failures, banned = st["hash_failures"], st["banned"]
        assert isinstance(failures, int) and failures >= 1
        assert isinstance(banned, list) and EVIL_HOST in banned and HONEST_HOST not in banned
        assert any(r.blocks_sent for r in liar.records), "the liar actually served corrupt blocks"
        assert_evil_closed(client, frozenset({R.REPUTATION_TOO_LOW}), r"corrupt data")
        assert_evil_saw_close(liar)
        assert_honest_untouched(client, t, frozenset({R.BOTH_SEEDS}))
        # A banned IP is refused when it comes back (here: it dials minibt itself).
        n_before = len(liar.records)
        liar.dial((HONEST_HOST, client.port))
        run_client_until(client, lambda: len(liar.records) > n_before and liar.records[-1].closed_at is not None,
                  "the banned liar's new connection refused", time.monotonic() + 10)
        assert liar.records[-1].handshake_at is None and liar.records[-1].closed_by_remote
    assert_same_payload(dl / "payload.bin", swarm.payload)


def test_liar_is_banned_while_a_libtorrent_seeder_completes_the_download(tmp_path: Path, swarm: Swarm) -> None:
    """Issue 3: a peer serving corrupt blocks is banned; the download completes from a libtorrent seeder."""
    deadline = time.monotonic() + TEST_DEADLINE_S
    # Throttle libtorrent (PROTOCOL.md 7.10: its limits skip loopback unless told otherwise) so the
    # liar gets to serve several pieces before the honest seeder has sent everything.
    lt_seed = LibtorrentPeer(tmp_path / "lt-seed", torrent_path=swarm.torrent_path, save_dir=swarm.seed_dir,
                             seed=True, extra_settings={"upload_rate_limit": 600_000,
                                                        "ignore_limits_on_local_network": False})
    with running(lt_seed), evil_for(swarm, Mode.LIAR) as liar, in_process_client(tmp_path) as client:
        lt_seed.wait_until(lambda: bool(lt_seed.status().get("is_seeding")), 20.0, "libtorrent seeding")
        dl = tmp_path / "dl"
        t = client.add(swarm.meta, str(dl), mode="download", peers=[liar.listen(), (HONEST_HOST, lt_seed.port)])
        run_client_until(client, lambda: done_downloading(t) and EVIL_HOST in t.banned,
                  "download complete and the liar banned", deadline,
                  lambda: f"status: {t.status(client.clock.now())}\n{lt_seed.log_tail()}")
        st = t.status(client.clock.now())
        assert isinstance(st["hash_failures"], int) and st["hash_failures"] >= 3  # 100 - 3 * 20 <= 50
        assert EVIL_HOST in t.banned and HONEST_HOST not in t.banned
        assert client.session.reputation.score(EVIL_HOST) <= 50
        assert_evil_closed(client, frozenset({R.REPUTATION_TOO_LOW}), r"corrupt data")
        assert lt_seed.status()["total_payload_upload"] > 0
    assert_same_payload(dl / "payload.bin", swarm.payload)


def test_honest_mode_evil_peer_alone_serves_a_complete_download(tmp_path: Path, swarm: Swarm) -> None:
    """Control: the evil peer's framing is correct, so the disconnects above come from the misbehaviour."""
    deadline = time.monotonic() + TEST_DEADLINE_S
    with evil_for(swarm, Mode.HONEST) as peer, in_process_client(tmp_path) as client:
        addr = peer.listen()
        dl = tmp_path / "dl"
        t = client.add(swarm.meta, str(dl), mode="download", peers=[addr])
        run_client_until(client, lambda: done_downloading(t), "download from the honest-mode peer", deadline)
        assert [c for c in closes_of(client, EVIL_HOST) if c[2] is not R.BOTH_SEEDS] == []
        assert t.status(client.clock.now())["hash_failures"] == 0
        assert sum(r.blocks_sent for r in peer.records) >= swarm.meta.num_pieces
    assert_same_payload(dl / "payload.bin", swarm.payload)


# --------------------------------------------------------------------------------------------- seeding

SEED_CASES: dict[Mode, Case] = {
    Mode.BAD_REQUEST: (frozenset({R.PROTOCOL_VIOLATION}), r"request index \d+ >="),
    Mode.HUGE_REQUEST: (frozenset({R.PROTOCOL_VIOLATION}), r"request length 1048576 "),
    Mode.REQUEST_FLOOD: (frozenset({R.PROTOCOL_VIOLATION}), r"flood"),
    Mode.REQUEST_FLOOD_CHOKED: (frozenset({R.PROTOCOL_VIOLATION}), r"flood"),
    Mode.GARBAGE: (ANY_WIRE_ERROR, ""),
    Mode.HUGE_LENGTH: (frozenset({R.MESSAGE_TOO_LARGE}), r"length prefix 2147483648 "),
    Mode.FAST_NOT_NEGOTIATED: (frozenset({R.PROTOCOL_VIOLATION}), r"have_none without the fast extension"),
    Mode.BAD_PSTR: (frozenset({R.BAD_HANDSHAKE}), r"pstr"),
    Mode.WRONG_INFO_HASH: (frozenset({R.UNKNOWN_INFO_HASH}), r"^[0-9a-f]{40}$"),
    Mode.EXT_HANDSHAKE_SEGMENT: (frozenset({R.MALFORMED_MESSAGE}), r"extension handshake is not valid bencode"),
}


@pytest.mark.parametrize("mode", list(SEED_CASES), ids=lambda m: m.value)
def test_seeding_survives_evil_leecher_and_serves_honest_one(mode: Mode, tmp_path: Path, swarm: Swarm) -> None:
    deadline = time.monotonic() + TEST_DEADLINE_S
    expected, detail = SEED_CASES[mode]
    with evil_for(swarm, mode, role="leech") as evil, in_process_client(tmp_path) as client:
        t = client.add(swarm.meta, str(swarm.seed_dir), mode="seed")
        run_client_until(client, lambda: t.state is TorrentState.SEEDING, "the seed's check", deadline)
        leecher = MinibtProcess(
            tmp_path / "honest-leecher",
            ["download", str(swarm.torrent_path), "--dir", str(tmp_path / "dl"), "--port", "0", "--bind",
             HONEST_HOST, "--peer", f"{HONEST_HOST}:{client.port}", "--state-dir",
             str(tmp_path / "honest-leecher" / "state"), "--quiet", "--timeout", str(TEST_DEADLINE_S)],
            wait_port=False,
        )
        evil.dial((HONEST_HOST, client.port))
        with running(leecher):
            run_client_until(client, lambda: leecher.returncode() is not None and bool(closes_of(client, EVIL_HOST)),
                      f"honest leecher done and {mode.value} leecher disconnected", deadline,
                      lambda: f"evil records: {evil.records}\n{leecher.log_tail()}")
            assert leecher.returncode() == 0, leecher.log_tail()
        assert_evil_closed(client, expected, detail)
        assert_evil_saw_close(evil)
        assert t.state is TorrentState.SEEDING
        # The honest leecher hung up itself once complete; minibt never threw it out.
        assert_honest_untouched(client, t, frozenset({R.CLOSED_BY_REMOTE, R.IO_ERROR}))
        uploaded = t.status(client.clock.now())["uploaded"]
        assert isinstance(uploaded, int) and uploaded >= swarm.meta.total_length
    assert_same_payload(tmp_path / "dl" / "payload.bin", swarm.payload)
    assert os.path.getsize(swarm.seed_dir / "payload.bin") == PAYLOAD_LEN
