"""Fuzz target for the files minibt reads back from its own state directory: damaged, cut short, or written by
someone else (a failing SD card, a hand edit, another version).

``state_files`` takes ``(kind, data)``: the bytes of one file of one kind.

- resume data (``resume.decode_resume``): only StorageError, and what decodes encodes and decodes back equal;
- ``dht.dat`` (``dhtservice.saved_state``): never raises; a 20-byte node id and well-formed nodes come back;
- ``status.json`` as ``minibt status`` reads and prints it (``statusfile.read_status``, ``format_status``, and
  the ``--json`` dump): never raises; every line prints in UTF-8;
- ``runner-state.json`` as ``minibt run`` reads it (``statusfile.read_json``, ``runplan.persisted_jobs``):
  never raises; every record comes back with fields of the right types, which the runner saves again.

Most inputs are a valid file with one value replaced by a JSON or bencode value of any type, or with its bytes
mutated; some are nested far deeper than the parsers recurse.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import random
import shutil
import tempfile
from typing import Any

from fuzzkit import Target, bvalues, call, check, mutated, register
from hypothesis import strategies as st

from minibt import bencode
from minibt.dhtservice import saved_state
from minibt.errors import StorageError
from minibt.filenames import FsRules
from minibt.resume import ResumeData, decode_resume, encode_resume
from minibt.routing import RoutingTable
from minibt.runplan import persisted_jobs
from minibt.statusfile import format_status, read_json, read_status

NAME = "state_files"
RESUME, DHT_DAT, STATUS, RUNNER_STATE = range(4)
WORK = tempfile.mkdtemp(prefix="minibt-fuzz-state.")
atexit.register(shutil.rmtree, WORK, True)

GOOD_RESUME = encode_resume(ResumeData(
    info_hash=bytes(range(20)), piece_length=32768, num_pieces=11, have=b"\xff\xe0", file_sizes=(100000, 0, 260000),
    uploaded=5, downloaded=360000, saved_at=1.7e9, rules=FsRules.POSIX, renamed=((1, ("dir", "b_")),),
    pending=b"\x00\x20", boot_id="0b7c5e0e-6c1f-4a43-9a1e-0f1e2d3c4b5a"))
GOOD_DHT = bencode.encode({
    b"id": b"\x01" * 20,
    b"nodes": b"".join(bytes((i,)) * 20 + bytes((10, 0, 0, i)) + (6881 + i).to_bytes(2, "big") for i in range(1, 4)),
    b"nodes6": b"\x09" * 20 + bytes(15) + b"\x02" + (6881).to_bytes(2, "big"),
})
GOOD_STATUS: dict[str, Any] = {
    "mode": "daemon", "pid": 1, "running": True, "listen_port": 6881, "updated_at": 100.0,
    "process": {"rss_bytes": 30 << 20, "peak_rss_bytes": 31 << 20, "cpu_percent": 2.5, "cpu_seconds": 1.2},
    "limits": {"memory_budget_bytes": 96 << 20, "upload_limit_bps": None, "download_limit_bps": 1024.0, "alt_rates": False},
    "dht": {"nodes": 120, "good": 80, "store_info_hashes": 3},
    "torrents": [{"name": "a", "state": "downloading", "progress": 0.5, "rate_down": 2048, "rate_up": 0, "peers": 3,
                  "ratio": 0.25, "disk_error": None, "paused": None, "waiting": None, "error": None, "finished": None,
                  "encrypted_peers": 1, "dht": {"peers_found": 4, "done": False}}],
    "watch_dir": {"path": "/srv/watch", "waiting": None},
}
GOOD_RUNNER_STATE: dict[str, Any] = {
    "k1": {"seed_s": 3600.5, "hook_done": True, "finished": "seed ratio 2.00 >= 2", "finished_for": [2.0, None]},
    "k2": {"seed_s": 0, "hook_done": False, "finished": None, "finished_for": [None, 86400.0]},
}

json_leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from((2**64, -(2**70), 10**300)),
                        st.floats(), st.text(max_size=12), st.sampled_from(("\ud800", "\udcff", "x" * 300)))
json_values = st.recursive(json_leaves, lambda c: st.one_of(st.lists(c, max_size=3),
                                                            st.dictionaries(st.text(max_size=6), c, max_size=3)),
                           max_leaves=8)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document (a path is a tuple of keys and list indexes)."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _replaced(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _replaced(doc[head], rest, value)}
    return [_replaced(v, rest, value) if i == head else v for i, v in enumerate(doc)]


@st.composite
def json_file(draw: st.DrawFn, good: Any) -> bytes:
    """A JSON state file: ``good`` with values replaced, its text mutated, or nested deep."""
    how = draw(st.integers(0, 9))
    if how == 0:  # deeper than json recurses (RecursionError) or than the readers accept
        depth = draw(st.sampled_from((33, 900, 1100)))
        nested = b"[" * depth + b"]" * depth
        return b'{"torrents": ' + nested + b"}" if draw(st.booleans()) else nested
    doc = good
    for _ in range(draw(st.integers(1, 3))):
        doc = _replaced(doc, draw(st.sampled_from(_paths(doc))), draw(json_values))
    text = json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")
    return draw(mutated(text)) if how == 1 else text


@st.composite
def bencoded_file(draw: st.DrawFn, good: bytes) -> bytes:
    """A bencoded state file: ``good`` with one key's value replaced or a key added, or its bytes mutated."""
    if draw(st.booleans()):
        return draw(mutated(good))
    d = bencode.decode(good)
    key = draw(st.one_of(st.sampled_from(sorted(d)), st.binary(max_size=8)))
    d[key] = draw(bvalues)
    if draw(st.integers(0, 3)) == 0 and isinstance(d.get(b"names"), dict):
        d[b"names"][draw(st.sampled_from((b"rules", b"files")))] = draw(bvalues)
    return bencode.encode(d)


state_inputs = st.one_of(
    st.tuples(st.just(RESUME), bencoded_file(GOOD_RESUME)),
    st.tuples(st.just(DHT_DAT), bencoded_file(GOOD_DHT)),
    st.tuples(st.just(STATUS), json_file(GOOD_STATUS)),
    st.tuples(st.just(RUNNER_STATE), json_file(GOOD_RUNNER_STATE)),
    st.tuples(st.integers(0, 3), st.binary(max_size=64)),
)


def _file(name: str, data: bytes) -> str:
    path = os.path.join(WORK, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _run(inp: tuple[int, bytes]) -> None:
    kind, data = inp
    if kind == RESUME:
        rd, _ = call(NAME, "decode_resume", StorageError, decode_resume, data, "fuzz.resume")
        if rd is not None:
            again, _ = call(NAME, "encode_resume", (), encode_resume, rd)
            back, _ = call(NAME, "decode_resume again", (), decode_resume, again, "fuzz.resume")
            check(NAME, "resume round trip", back == rd, f"{rd!r} encoded and decoded is {back!r}")
    elif kind == DHT_DAT:
        (own, nodes), _ = call(NAME, "saved_state", (), saved_state, data, random.Random(0), now=0.0)
        check(NAME, "dht.dat id", isinstance(own, bytes) and len(own) == 20, f"node id {own!r}")
        check(NAME, "dht.dat nodes", all(len(i) == 20 and i != own and 0 < a[1] < 65536 for i, a in nodes),
              f"nodes {nodes!r}")
        if nodes:  # what came back is a table minibt can start from and save again
            table = RoutingTable(own, random.Random(0), now=0.0)
            for node_id, addr in nodes:
                table.heard_from(node_id, addr, now=0.0, replied=True)
            again, _ = call(NAME, "saved_state again", (), saved_state, table.to_bytes(), random.Random(0), now=0.0)
            check(NAME, "dht.dat round trip", again[0] == own, "the saved id changed")
    elif kind == STATUS:
        doc, _ = call(NAME, "read_status", (), read_status, _file("status.json", data))
        if doc is not None:
            lines, _ = call(NAME, "format_status", (), format_status, doc, now_wall=1e9, pid_alive=True, touched_at=5.0)
            check(NAME, "status lines", all(isinstance(x, str) for x in lines), f"lines {lines!r}")
            for line in lines:
                call(NAME, "status line in UTF-8", (), line.encode, "utf-8")
            call(NAME, "status --json", (), json.dumps, doc, indent=1, sort_keys=True)
    else:
        doc, _ = call(NAME, "read_json", (), read_json, _file("runner-state.json", data))
        (records, damaged), _ = call(NAME, "persisted_jobs", (), persisted_jobs, doc)
        check(NAME, "damaged count", 0 <= damaged <= (len(doc) if isinstance(doc, dict) else 1), f"{damaged}")
        for rec in records.values():
            seed_s, hook, fin, fin_for = rec["seed_s"], rec["hook_done"], rec["finished"], rec["finished_for"]
            check(NAME, "record types", isinstance(seed_s, float) and math.isfinite(seed_s) and seed_s >= 0
                  and isinstance(hook, bool) and (fin is None or isinstance(fin, str))
                  and (fin_for is None or isinstance(fin_for, list)), f"record {rec!r}")
        call(NAME, "save again", (), json.dumps, records)


register(Target(NAME, state_inputs, _run, from_bytes=lambda d, plan: (d[0] % 4, d[1:]) if d else (RESUME, b""),
                to_bytes=lambda inp: bytes((inp[0],)) + inp[1]))
