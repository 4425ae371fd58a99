"""tools/bench.py and tools/benchlib.py (issue 15 benchmark): the pure helpers, a loopback tracker, /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest

from minibt.bencode import decode
from tests.unit.test_bench_mse_tool import load_tool


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_tool("bench")


@pytest.fixture(scope="module")
def lib(bench: ModuleType) -> ModuleType:
    return sys.modules["benchlib"]  # the module bench.py imported its helpers from


def test_parser_sizes_files_sparse_seed(bench: ModuleType) -> None:
    ap = bench.build_parser()
    a = ap.parse_args([])
    assert (a.size_mib, a.files, a.sparse, a.seed_leechers, a.clients) == ([1024], 0, False, 0, None)
    assert (a.seeders, a.warmup_mib) == (1, None)
    a = ap.parse_args(["--size-mib", "32,16384", "--files", "200", "--sparse", "--seed-leechers", "8"])
    assert (a.size_mib, a.files, a.sparse, a.seed_leechers) == ([32, 16384], 200, True, 8)
    for bad in ("0", "x", "32,", "-4"):
        with pytest.raises(SystemExit):
            ap.parse_args(["--size-mib", bad])


def test_seeder_settings_rate_and_transport(bench: ModuleType, lib: ModuleType) -> None:
    ap = bench.build_parser()
    assert bench.seeder_settings(ap.parse_args([])) == {}
    limited = bench.seeder_settings(ap.parse_args(["--seed-rate", "40"]))
    assert limited == {"upload_rate_limit": 40 << 20, "limit_local": True}
    slow = bench.seeder_settings(ap.parse_args(["--seed-rate", "0.25"]))  # many slow seeders (--seeders 16)
    assert slow["upload_rate_limit"] == 256 << 10 and isinstance(slow["upload_rate_limit"], int)
    mixed = ap.parse_args(["--seeders", "4", "--seed-rate", "4,0.0625"])  # one fast seeder, the rest slow
    assert [bench.seeder_settings(mixed, i)["upload_rate_limit"] for i in range(4)] == [4 << 20] + [64 << 10] * 3
    for bad in ("fast", "1,-2", "0"):
        with pytest.raises(SystemExit):
            ap.parse_args(["--seed-rate", bad])
    utp = bench.seeder_settings(ap.parse_args(["--transport", "utp", "--seed-rate", "5"]))
    assert utp == {**lib.UTP_ONLY, **lib.BIG_BUFFERS, "upload_rate_limit": 5 << 20, "limit_local": True}
    assert "limit_local = extra.pop(\"limit_local\", False)" in lib.LT_PEER  # taken out before settings


def test_main_rejects_unknown_or_inapplicable_clients(bench: ModuleType) -> None:
    for argv in (["--clients", "qbittorrent"], ["--transport", "utp", "--clients", "aria2"],
                 ["--seed-leechers", "2", "--clients", "aria2"], ["--seed-leechers", "2", "--transport", "utp"],
                 ["--seeders", "0"], ["--seeders", "2", "--seed-leechers", "2"]):
        with pytest.raises(SystemExit):
            bench.main(argv)


def test_leecher_rows_per_case(bench: ModuleType) -> None:
    rows = bench.leecher_rows
    assert [n for n, _ in rows("tcp", "none", None)] == ["minibt", "libtorrent", "aria2"]
    assert [n for n, _ in rows("utp", "none", None)] == ["minibt", "libtorrent", "lt-bigbuf"]
    assert rows("tcp", "required", None) == [("minibt", "plain"), ("libtorrent", "plain"), ("aria2", "plain"),
                                             ("minibt-rc4", "rc4"), ("lt-rc4", "rc4"), ("aria2-rc4", "rc4")]
    assert rows("tcp", "none", ["aria2", "minibt"]) == [("minibt", "plain"), ("aria2", "plain")]
    with pytest.raises(ValueError, match="does not apply"):
        rows("tcp", "none", ["minibt-rc4"])
    with pytest.raises(ValueError, match="unknown"):
        rows("tcp", "none", ["transmission"])
    assert bench.seeder_rows(None) == ["minibt", "libtorrent"]
    assert bench.seeder_rows(["libtorrent"]) == ["libtorrent"]
    with pytest.raises(ValueError):
        bench.seeder_rows(["aria2"])


def test_payload_layout_single_and_many(lib: ModuleType) -> None:
    assert lib.payload_layout(5 << 20, 0) == [("payload.bin", 5 << 20)]
    total = 256 << 20
    layout = lib.payload_layout(total, 200)
    sizes = [n for _, n in layout]
    assert sum(sizes) == total and min(sizes) >= 1 and len(layout) == 200
    assert max(sizes) > 4 * min(sizes)  # varied, not equal slices
    names = [p for p, _ in layout]
    assert len(set(names)) == 200 and all(p.startswith("payload/") for p in names)
    assert len({p.rsplit("/", 1)[0] for p in names}) == 4  # 50 files per subdirectory
    assert layout == lib.payload_layout(total, 200)  # deterministic
    assert sum(n for _, n in lib.payload_layout(7, 7)) == 7
    with pytest.raises(ValueError):
        lib.payload_layout(3, 4)


def test_make_payload_sparse_and_tree_sha1(lib: ModuleType, tmp_path: Path) -> None:
    layout = lib.payload_layout(1 << 20, 3)
    lib.make_payload(str(tmp_path), layout, sparse=True)
    for rel, size in layout:
        assert os.path.getsize(tmp_path / rel) == size
    digests = lib.tree_sha1(str(tmp_path / "payload"))
    assert sorted(digests) == sorted(rel for rel, _ in layout)  # relative to the payload's parent
    lib.make_payload(str(tmp_path / "r"), [("payload.bin", 70_000)], sparse=False)
    one = lib.tree_sha1(str(tmp_path / "r" / "payload.bin"))
    assert list(one) == ["payload.bin"]
    assert one != {"payload.bin": lib.tree_sha1(str(tmp_path / "payload"))[layout[0][0]]}
    (tmp_path / "r" / "payload.bin").write_bytes(b"\0" * 70_000)
    assert lib.tree_sha1(str(tmp_path / "r" / "payload.bin")) != one  # random content was written


def test_tracker_reply_and_loopback_tracker(lib: ModuleType) -> None:
    peers = [("127.0.0.1", 6881), ("127.0.0.2", 65535)]
    reply = decode(lib.tracker_reply(peers, interval_s=30))
    assert reply[b"interval"] == 30 and reply[b"min interval"] == 30
    assert reply[b"peers"] == bytes([127, 0, 0, 1, 0x1A, 0xE1, 127, 0, 0, 2, 0xFF, 0xFF])
    with lib.LoopbackTracker(peers[:1]) as tracker:
        assert tracker.url.startswith("http://127.0.0.1:")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(tracker.url + "?info_hash=x&port=1", timeout=5) as r:
            got = decode(r.read())
        assert got[b"peers"] == bytes([127, 0, 0, 1, 0x1A, 0xE1])
        assert tracker.requests == 1


def test_parse_proc_io(lib: ModuleType) -> None:
    text = ("rchar: 100\nwchar: 2048\nsyscr: 7\nsyscw: 3\nread_bytes: 0\nwrite_bytes: 4096\n"
            "cancelled_write_bytes: 0\nbogus line\n")
    io = lib.parse_proc_io(text)
    assert io["syscw"] == 3 and io["write_bytes"] == 4096 and io["wchar"] == 2048 and "bogus line" not in io
    assert lib.parse_proc_io("") == {}
    mine = lib.read_proc_io(os.getpid())
    assert mine == {} or "syscw" in mine  # unreadable /proc/self/io (some sandboxes) gives {}


def test_run_measured_counts_write_calls(lib: ModuleType, tmp_path: Path) -> None:
    if not lib.read_proc_io(os.getpid()):
        pytest.skip("/proc/PID/io is not readable here")
    out = tmp_path / "w.bin"
    code = f"import os\nfd = os.open({str(out)!r}, os.O_WRONLY | os.O_CREAT)\nfor _ in range(300): os.write(fd, b'x')\n"
    r = lib.run_measured("writer", [sys.executable, "-c", code], timeout_s=30)
    assert r.syscw >= 300 and r.cpu_s > 0 and r.maxrss_kib > 0 and r.oublock >= 0
    assert out.stat().st_size == 300
    with pytest.raises(RuntimeError, match="exited with 3"):
        lib.run_measured("fails", [sys.executable, "-c", "raise SystemExit(3)"], timeout_s=30)


def test_aria2_argv(lib: ModuleType) -> None:
    argv = lib.aria2_argv("aria2c", "t.torrent", "/d", tracker_url="http://127.0.0.1:9/announce", listen_port=7000,
                          rc4=False)
    for opt in ("--enable-dht=false", "--enable-dht6=false", "--bt-enable-lpd=false", "--enable-peer-exchange=false",
                "--interface=127.0.0.1", "--bt-exclude-tracker=*", "--bt-tracker=http://127.0.0.1:9/announce",
                "--seed-time=0", "--listen-port=7000", "--dir=/d"):
        assert opt in argv
    assert argv[0] == "aria2c" and argv[-1] == "t.torrent"
    assert not any(a.startswith(("--file-allocation", "--bt-require-crypto")) for a in argv)  # defaults kept
    rc4 = lib.aria2_argv("aria2c", "t.torrent", "/d", tracker_url="u", listen_port=1, rc4=True)
    assert "--bt-require-crypto=true" in rc4 and "--bt-min-crypto-level=arc4" in rc4


def test_rows_and_ratio_lines(bench: ModuleType) -> None:
    gib = 1 << 30
    mb = bench.Result("minibt", 4.0, 6.0, 40 * 1024, 30 * 1024, oublock=2 * 1024 * 2048, syscw=8192)
    lt = bench.Result("libtorrent", 3.0, 3.0, 30 * 1024, 10 * 1024, oublock=0, syscw=0)
    ar = bench.Result("aria2", 8.0, 2.0, 20 * 1024, 5 * 1024, oublock=0, syscw=0)
    row = mb.row(2 * gib)
    assert "512.0 MiB/s" in row and "3.00 CPU s/GiB" in row and "4096 write calls/GiB" in row
    assert "1024.0 MiB written/GiB" in row
    lines = bench.ratio_lines([mb, lt, ar], 1, 0)
    assert "minibt CPU s/GiB = 2.00x libtorrent's (target <= 1.00x: NOT met)" in lines[0]
    assert "minibt throughput = 0.75x libtorrent's (target >= 0.85x: NOT met)" in lines[0]
    assert "2.00x aria2's" in lines[1] and "NOT met" in lines[1]
    assert "target >= 1.00x" in bench.ratio_lines([mb, lt], 1, 200)[0]
    utp = bench.ratio_lines([mb, lt], 1, 0, True)[0]
    assert "2.00x libtorrent's uTP (target <= 1.00x: NOT met)" in utp and "target >=" not in utp
    s_mb = bench.SeedResult("minibt", 8, 10.0, 4.0, 30 * 1024, 20 * 1024, 16.0, 1.0)
    s_lt = bench.SeedResult("libtorrent", 8, 20.0, 8.0, 40 * 1024, 10 * 1024, 16.0, 1.0)
    assert "0.50 seeder CPU s/GiB uploaded" in s_mb.row(gib) and "819.2 MiB/s" in s_mb.row(gib)
    assert "0.50x libtorrent's (target <= 1.00x: met); aggregate throughput 2.00x" in bench.seed_ratio_lines(
        [s_mb, s_lt], 1)[0]


def test_machine_load_lines(bench: ModuleType) -> None:
    gib = 1 << 30
    plain = bench.Result("minibt", 4.0, 3.0, 30 * 1024, 20 * 1024, seeder_cpu_s=1.0, other_cpu_s=0.2)
    plain2 = bench.Result("minibt", 2.0, 3.0, 30 * 1024, 20 * 1024, seeder_cpu_s=1.0, other_cpu_s=0.2)
    rc4 = bench.Result("minibt-rc4", 4.0, 4.0, 30 * 1024, 20 * 1024, seeder_cpu_s=3.0, other_cpu_s=0.4)
    assert bench.machine_load([plain, rc4], "minibt", 2 * gib) == (2.0, 1.05)
    assert bench.machine_load([plain, plain2, rc4], "minibt", gib) == (4.0, (1.05 + 2.1) / 2)
    assert bench.machine_load([plain], "minibt-rc4", gib) is None
    lines = bench.ratio_lines([plain, rc4], 1, 0, size=gib)
    assert any(line.startswith("minibt-rc4 rows: leecher + seeder = 7.00 CPU s/GiB; the machine was 1.85 of")
               for line in lines)
    assert not any("rows: leecher" in line for line in bench.ratio_lines([plain, rc4], 1, 0))  # no size given


def test_warm_up_writes_and_removes_its_scratch_file(lib: ModuleType, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[int] = []
    real_pwrite = os.pwrite

    def spy(fd: int, data: bytes, offset: int) -> int:
        written.append(len(data))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(lib.os, "pwrite", spy)
    lib.warm_up(str(tmp_path), 9)
    assert sum(written) == 12 << 20 and os.listdir(tmp_path) == []  # whole 4 MiB chunks, file gone
    lib.warm_up(str(tmp_path), 0)
    assert sum(written) == 12 << 20
    monkeypatch.setattr(lib, "PAGE_REPORTING", str(tmp_path))
    assert lib.default_warmup_mib(1024) == 2048 and lib.default_warmup_mib(16384) == 2048
    monkeypatch.setattr(lib, "PAGE_REPORTING", str(tmp_path / "absent"))
    assert lib.default_warmup_mib(1024) == 0


def test_fresh_bytecode_compiles_stale_modules(lib: ModuleType, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")  # as on the VM: imports alone write nothing
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "mod.py").write_text("Y = 2\n")
    line = lib.fresh_bytecode(str(pkg))
    assert "up to date" in line
    cached = sorted(p.name.split(".")[0] for p in (pkg / "__pycache__").iterdir())
    assert cached == ["__init__", "mod"]
    (pkg / "bad.py").write_text("def (:\n")
    assert "COMPILE ERRORS" in lib.fresh_bytecode(str(pkg))


@pytest.mark.parametrize("tool", ["bench.py", "bench_idle.py", "bench_startup.py", "bench_utp.py", "bench_mse.py", "bench_utp_rx.py"])
def test_each_benchmark_loads(tool: str) -> None:
    """Every benchmark at least imports and parses its options (bench_utp once imported a removed name)."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "tools" / tool), "--help"], capture_output=True, text=True,
                       timeout=60, cwd=root)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout


def test_utp_receive_microbenchmark_runs_and_delivers_every_byte() -> None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "tools" / "bench_utp_rx.py"), "--datagrams", "3000", "--runs", "1"],
                       capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stderr
    line = r.stdout.splitlines()[0]
    n, got = int(line.split("(")[1].split()[0]), int(line.split(", ")[1].split()[0])
    assert n >= 3000 and got >= n * 1000  # full-size data packets, each delivered
    assert "best of 1" in r.stdout


def test_peak_rss_is_the_childs_own_not_this_process_s(lib: ModuleType) -> None:
    """wait4's ru_maxrss of a child is at least its parent's RSS when it was started (the forked image
    counts), so a big benchmark script would floor every row; run_measured reports the exec'd
    program's own high-water mark (VmHWM)."""
    ballast = bytearray(96 << 20)
    for i in range(0, len(ballast), 4096):
        ballast[i] = 1  # resident
    code = "import time\nb = bytearray(8 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\ntime.sleep(0.3)\n"
    r = lib.run_measured("small", [sys.executable, "-c", code], timeout_s=30)
    assert 8 << 10 < r.maxrss_kib < 64 << 10  # the child's ~8 MiB bytearray plus an interpreter, not 96 MiB more
    del ballast


def test_delay_relay_holds_each_way_half_the_round_trip(bench: ModuleType) -> None:
    """tools/delayrelay.py (bench --rtt-ms): a TCP echo through it answers no sooner than the round trip,
    the bytes intact; the UDP mode does the same for a datagram."""
    import socket
    import threading
    import time

    rtt_ms = 120.0
    srv = socket.create_server(("127.0.0.1", 0))
    udp_srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_srv.bind(srv.getsockname())  # the same port number, as a uTP seeder listens on both

    def echo() -> None:
        conn, _ = srv.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def echo_udp() -> None:
        data, addr = udp_srv.recvfrom(65536)
        udp_srv.sendto(data, addr)

    threading.Thread(target=echo, daemon=True).start()
    threading.Thread(target=echo_udp, daemon=True).start()
    target = f"127.0.0.1:{srv.getsockname()[1]}"
    relays = []
    try:
        relay, addr = bench.start_relay(target, rtt_ms)
        relays.append(relay)
        host, port = addr.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=10) as c:
            payload = os.urandom(300_000)
            t0 = time.monotonic()
            c.sendall(payload)
            got = b""
            while len(got) < len(payload):
                got += c.recv(65536)
            assert got == payload
            assert time.monotonic() - t0 >= rtt_ms / 1000
        relay, addr = bench.start_relay(target, rtt_ms, udp=True)
        relays.append(relay)
        host, port = addr.rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.settimeout(10)
            t0 = time.monotonic()
            u.sendto(b"datagram", (host, int(port)))
            assert u.recvfrom(100)[0] == b"datagram"
            assert time.monotonic() - t0 >= rtt_ms / 1000
    finally:
        for r in relays:
            r.close()
        srv.close()
        udp_srv.close()


def test_rtt_and_minibt_arg_options(bench: ModuleType) -> None:
    a = bench.build_parser().parse_args(["--rtt-ms", "100", "--minibt-arg=--cache=8MiB", "--minibt-arg=-v"])
    assert a.rtt_ms == (100.0,) and a.minibt_arg == ["--cache=8MiB", "-v"]
    assert bench.build_parser().parse_args([]).rtt_ms == ()
    assert bench.build_parser().parse_args(["--rtt-ms", "0"]).rtt_ms == ()  # no relay at all
    b = bench.build_parser().parse_args(["--seeders", "4", "--rtt-ms", "20,0,300"])
    assert [bench.seeder_rtt(b, i) for i in range(4)] == [20.0, 0.0, 300.0, 300.0]  # the last for the rest
    assert bench.seeder_rtt(a, 3) == 100.0 and bench.seeder_rtt(bench.build_parser().parse_args([]), 0) == 0.0
    for bad in ("-5", "x", "20,,300"):
        with pytest.raises(SystemExit):
            bench.build_parser().parse_args(["--rtt-ms", bad])


def test_minibt_rows_run_in_the_tree_given_by_minibt_repo(bench: ModuleType, lib: ModuleType, tmp_path: Path) -> None:
    """``python -m minibt`` imports the package of its working directory first: an A/B of two trees needs the
    child started there (running bench.py from the other tree's directory did not do it)."""
    assert bench.build_parser().parse_args([]).minibt_repo == lib.REPO
    assert bench.build_parser().parse_args(["--minibt-repo", str(tmp_path)]).minibt_repo == str(tmp_path)
    pkg = tmp_path / "minibt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text("import minibt, sys; sys.stdout.write(minibt.__file__)")
    w = lib.Watched([sys.executable, "-m", "minibt"], stdout=subprocess.PIPE, cwd=str(tmp_path))
    out, _ = w.proc.communicate(timeout=30)
    assert out == str(pkg / "__init__.py")
