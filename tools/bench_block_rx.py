#!/usr/bin/env python3
"""TCP download path, in one process: microseconds of Python per received block.

    python3 tools/bench_block_rx.py [--size-mib 256] [--runs 3] [--repo DIR ...]

One leecher ``Session`` (session.py) and a scripted seeder that answers every request at once, no sockets:
the seeder's piece messages are handed to ``Session.on_data`` in 256 KiB reads from one reused buffer, as
the loop's ``recv_into`` does.  The clock is fake.  Timed: every call into the session, the ones the
loop thread makes (``on_data``, ``on_hash_result``, ``take_actions``, ``data_to_send``, ``tick``).  Not
timed: the seeder's side and the hash jobs (SHA-1 and ``pwrite``, a worker's part), run inline.  So the
figure is the Python cost a TCP download pays on its loop thread per 16 KiB block, without the system
calls (a 1 GiB download receives 65,536 blocks); ``tools/bench.py`` measures whole downloads.
``--repo`` names source trees to compare (repeatable; default: this one); runs alternate between them.

``--instructions``: instead of timing, count the instructions executed inside the same calls under valgrind's
callgrind (each call goes through ``operator.call``, whose C function callgrind counts from; ``PYTHONHASHSEED=0``),
one run per tree (default 32 MiB: about 20 s each): the count repeats to within a few hundred instructions in
a hundred million, so a change far below the timing's spread on a shared machine shows.  Per block, each tree
against the first; it includes ``add_torrent`` once and the copy of each block into its piece buffer, so compare
trees rather than read it as CPU time.  It needs a Python whose static symbols are not stripped (a source build,
as pyenv makes; Debian's python3 strips them, and the tool then says so).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import hashlib, operator, os, random, struct, sys, tempfile, time
from minibt.handshake import make_reserved
from minibt.metainfo import create_torrent, parse_metainfo
from minibt.session import Session
from minibt.settings import Encryption, Mode, SessionConfig, TorrentState
from minibt.workers import InlineHasher
from minibt.effects import HashPiece

size = int(sys.argv[1]) << 20
PIECE, BLOCK, READ = 256 * 1024, 16 * 1024, 256 * 1024
tmp = tempfile.mkdtemp(prefix="bench_block_rx.")
src = os.path.join(tmp, "payload.bin")
payload = hashlib.shake_128(b"bench_block_rx").digest(1 << 20) * (size >> 20)
with open(src, "wb") as f:
    f.write(payload)
meta = parse_metainfo(create_torrent(src, piece_length=PIECE))
os.unlink(src)
dl = os.path.join(tmp, "dl")
os.mkdir(dl)
now = 1.0
s = Session(rng=random.Random(1), config=SessionConfig(encryption=Encryption.NONE, pex=False, holepunch=False),
            wall_clock=lambda: 1e9)
s.set_listen("127.0.0.1", 6881)
hasher = InlineHasher()
spent = [0.0]
def timed(fn, *a, **k):  # through operator.call: its C function is where --instructions counts from
    t0 = time.perf_counter()
    r = operator.call(fn, *a, **k)
    spent[0] += time.perf_counter() - t0
    return r
t = timed(s.add_torrent, meta, dl, mode=Mode.DOWNLOAD, resume_path=None, now=now)
cid = timed(s.on_incoming, ("127.0.0.2", 51413), now=now)
hs = b"\x13BitTorrent protocol" + make_reserved(fast=True, extension=False) + meta.info_hash + b"-BB0001-" + bytes(12)
rbuf = bytearray(READ)
rview = memoryview(rbuf)
def feed(data):
    pos = 0
    while pos < len(data):
        n = min(READ, len(data) - pos)
        rbuf[:n] = data[pos : pos + n]
        timed(s.on_data, cid, rview[:n], now=now)
        pos += n
feed(hs + struct.pack(">IB", 1, 14) + struct.pack(">IB", 1, 1))  # Have All (BEP 6), Unchoke
inbox = b""
blocks = 0
next_tick = now
while t.state is not TorrentState.SEEDING:
    now += 0.0005
    if now >= next_tick:
        timed(s.tick, now=now)
        next_tick = now + 0.25
    for _ in range(100):
        acts = timed(s.take_actions)
        if not acts:
            break
        for a in acts:
            if isinstance(a, HashPiece):
                hasher.submit(a.job)
                for res in hasher.results():
                    timed(s.on_hash_result, res, now=now)
    inbox += timed(s.data_to_send, cid, 1 << 20, now=now)
    if inbox.startswith(b"\x13BitTorrent"):
        inbox = inbox[68:]
    out = bytearray()
    pos = 0
    while len(inbox) - pos >= 4:
        (n,) = struct.unpack_from(">I", inbox, pos)
        if len(inbox) - pos < 4 + n:
            break
        if n == 13 and inbox[pos + 4] == 6:
            index, begin, length = struct.unpack_from(">III", inbox, pos + 5)
            off = index * PIECE + begin
            out += struct.pack(">IBII", 9 + length, 7, index, begin) + payload[off : off + length]
            blocks += 1
        pos += 4 + n
    inbox = inbox[pos:]
    if out:
        feed(out)
    elif not acts and t.state is not TorrentState.SEEDING and now > 600:
        sys.exit("stalled")
ok = open(os.path.join(dl, "payload.bin"), "rb").read() == payload
for root, dirs, files in os.walk(tmp, topdown=False):
    for f in files:
        os.unlink(os.path.join(root, f))
    os.rmdir(root)
print(f"{spent[0] / blocks * 1e6:.2f} {blocks} {int(ok)}")
"""


def one_run(repo: str, size_mib: int) -> tuple[float, int, bool]:
    env = dict(os.environ, PYTHONPATH=repo)
    out = subprocess.run([sys.executable, "-c", CHILD, str(size_mib)], env=env, cwd=repo, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), int(out[1]), out[2] == "1"


def count_instructions(repo: str, size_mib: int) -> tuple[int, int, bool]:
    """Instructions executed inside the timed calls of one child run under callgrind; blocks; check."""
    env = dict(os.environ, PYTHONPATH=repo, PYTHONHASHSEED="0")
    p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", "--toggle-collect=_operator_call",
                        sys.executable, "-c", CHILD, str(size_mib)], env=env, cwd=repo, check=True, capture_output=True,
                       text=True)
    collected = [int(line.split(":")[-1]) for line in p.stderr.splitlines() if "Collected :" in line]
    if not collected or not collected[-1]:
        raise RuntimeError(f"callgrind counted nothing: {sys.executable} has no _operator_call symbol (stripped?)")
    out = p.stdout.split()
    return collected[-1], int(out[1]), out[2] == "1"


def instructions(repos: list[str], size_mib: int) -> int:
    from benchlib import fresh_bytecode  # a stale .pyc would count the compiler too

    first = 0.0
    for r in repos:
        print(fresh_bytecode(os.path.join(r, "minibt")), flush=True)
        n, blocks, ok = count_instructions(r, size_mib)
        if not ok:
            print(f"{r}: the downloaded file differs from the payload", file=sys.stderr)
            return 1
        per = n / blocks
        first = first or per
        delta = f" ({per - first:+,.0f}, {(per - first) / first:+.2%} against the first tree)" if r != repos[0] else ""
        print(f"{r}: {per:,.0f} instructions per block in the session's calls{delta}", flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=None, help="payload (default 256; 32 with --instructions)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--repo", action="append", help="source tree to measure (repeatable; default: this one)")
    ap.add_argument("--instructions", action="store_true", help="count instructions under valgrind instead of timing")
    args = ap.parse_args()
    repos = args.repo or [REPO]
    if args.instructions:
        return instructions(repos, args.size_mib or 32)
    args.size_mib = args.size_mib or 256
    results: dict[str, list[float]] = {r: [] for r in repos}
    for _ in range(args.runs):
        for r in repos:
            us, blocks, ok = one_run(r, args.size_mib)
            if not ok:
                print(f"{r}: the downloaded file differs from the payload", file=sys.stderr)
                return 1
            results[r].append(us)
            print(f"{r}: {us:.2f} us of session Python per block ({blocks} blocks)", flush=True)
    for r, v in results.items():
        print(f"{r}: best {min(v):.2f}, median {sorted(v)[len(v) // 2]:.2f} us per block over {len(v)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
