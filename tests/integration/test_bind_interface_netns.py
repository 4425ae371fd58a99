"""``interface``: nothing leaves through another interface, also while the bound one is down (issue 10).

Namespace A (minibt run, interface = "A1") reaches 198.18.9.9 in namespace S over two veth pairs:
A2 is the preferred route (metric 10), A1 a worse one (metric 100).  A seed and an HTTP tracker run
in S on 198.18.9.9.  nftables counters in A count TCP/UDP packets leaving through each device: A2
must stay at zero while the download starts, while A1 is down (status says "paused: interface ... is
down") and after it is up again, when the download resumes and completes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from clients import START_TIMEOUT_S, Client, wait_until
from runner_proc import RunnerProc, base_client, write_config

from minibt.metainfo import create_torrent

REPO = Path(__file__).resolve().parents[2]
TARGET = "198.18.9.9"  # benchmarking range (RFC 2544), only inside our namespaces
SEED_PORT = 6999
TRACKER_PORT = 6970
PAYLOAD_BYTES = 3 << 20
SEED_RATE = "384KiB"  # ~8 s for the payload: time to take the link down mid-way

TRACKER_SCRIPT = r'''
import http.server, socket, struct, sys
host, port, peer_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
peers = socket.inet_aton(host) + struct.pack(">H", peer_port)
reply = b"d8:intervali5e12:min intervali5e5:peers6:" + peers + b"e"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print("announce from", self.client_address[0], flush=True)
        self.send_response(200); self.send_header("Content-Length", str(len(reply))); self.end_headers()
        self.wfile.write(reply)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer((host, port), H)
print("tracker ready", flush=True)
srv.serve_forever()
'''


def _need(ok: bool, why: str) -> None:
    if ok:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


def sh(*argv: str) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, f"{' '.join(argv)}: {r.stderr.strip()}"
    return r.stdout


class NetNs:
    """Namespaces A and S joined by two veth pairs, with nftables counters on A's egress."""

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.a, self.s = f"mbA{tag}", f"mbS{tag}"
        self.a1, self.a2 = f"a1{tag}", f"a2{tag}"  # minibt's side; a1 is the bound interface
        self.s1, self.s2 = f"s1{tag}", f"s2{tag}"

    def up(self) -> None:
        a, s = self.a, self.s
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", s)
        for mine, theirs, net in ((self.a1, self.s1, "198.18.1"), (self.a2, self.s2, "198.18.2")):
            sh("ip", "link", "add", mine, "netns", a, "type", "veth", "peer", "name", theirs, "netns", s)
            sh("ip", "-n", a, "addr", "add", f"{net}.1/24", "dev", mine)
            sh("ip", "-n", s, "addr", "add", f"{net}.2/24", "dev", theirs)
            sh("ip", "-n", a, "link", "set", mine, "up")
            sh("ip", "-n", s, "link", "set", theirs, "up")
        for ns in (a, s):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", s, "addr", "add", f"{TARGET}/32", "dev", "lo")
        sh("ip", "-n", a, "route", "add", TARGET, "via", "198.18.2.2", "dev", self.a2, "metric", "10")
        self.route_a1()
        ruleset = f"""
table inet leak {{
    counter via_a1 {{ }}
    counter via_a2 {{ }}
    chain out {{
        type filter hook output priority 0; policy accept;
        oifname "{self.a1}" meta l4proto {{ tcp, udp }} counter name "via_a1"
        oifname "{self.a2}" meta l4proto {{ tcp, udp }} counter name "via_a2"
    }}
}}
"""
        r = subprocess.run(["ip", "netns", "exec", a, "nft", "-f", "-"], input=ruleset, text=True,
                           capture_output=True, timeout=20)
        assert r.returncode == 0, r.stderr

    def route_a1(self) -> None:
        """The route through A1 (dropped by the kernel when A1 goes down; a VPN client re-adds it)."""
        sh("ip", "-n", self.a, "route", "replace", TARGET, "via", "198.18.1.2", "dev", self.a1, "metric", "100")

    def set_a1(self, state: str) -> None:
        sh("ip", "-n", self.a, "link", "set", self.a1, state)

    def packets(self, name: str) -> int:
        out = sh("ip", "netns", "exec", self.a, "nft", "-j", "list", "counter", "inet", "leak", name)
        for item in json.loads(out)["nftables"]:
            if "counter" in item:
                return int(item["counter"]["packets"])
        raise AssertionError(f"no counter {name} in {out}")

    def down(self) -> None:
        for ns in (self.a, self.s):  # deleting a namespace deletes its veth ends and nft tables
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@pytest.fixture
def netns() -> Iterator[NetNs]:
    _need(sys.platform == "linux" and os.geteuid() == 0, "needs root on Linux for network namespaces")
    _need(shutil.which("ip") is not None and shutil.which("nft") is not None, "needs iproute2 and nftables")
    n = NetNs()
    try:
        n.up()
        yield n
    finally:
        n.down()


class InNs(Client):
    """A command run inside a namespace (``ip netns exec`` execs it: the PID is the command's)."""

    def __init__(self, workdir: Path, ns: str, argv: list[str], ready: str, name: str) -> None:
        self.name = name
        super().__init__(workdir)
        self.argv, self.ns, self.ready = argv, ns, ready

    def _launch(self) -> None:
        self._spawn(["ip", "netns", "exec", self.ns, *self.argv])

    def _wait_ready(self) -> None:
        self.wait_until(lambda: self.ready in self.log_text(), START_TIMEOUT_S, repr(self.ready))


class RunnerInNs(RunnerProc):
    def __init__(self, ns: str, *args: object, **kw: object) -> None:
        self.ns = ns
        super().__init__(*args, **kw)  # type: ignore[arg-type]

    def argv(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().argv()]


def test_bound_interface_only_and_pause_while_down(netns: NetNs, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))  # children import this tree's minibt
    seed_dir = tmp_path / "seed"
    seed_dir.mkdir()
    (seed_dir / "big.bin").write_bytes(os.urandom(PAYLOAD_BYTES))
    torrent = tmp_path / "big.torrent"
    torrent.write_bytes(create_torrent(str(seed_dir / "big.bin"),
                                       trackers=[f"http://{TARGET}:{TRACKER_PORT}/announce"]))
    script = tmp_path / "tracker.py"
    script.write_text(TRACKER_SCRIPT)
    tracker = InNs(tmp_path / "tracker", netns.s, [sys.executable, str(script), TARGET, str(TRACKER_PORT),
                                                   str(SEED_PORT)], "tracker ready", "tracker")
    seed = InNs(tmp_path / "seeder", netns.s,
                [sys.executable, "-m", "minibt", "seed", str(torrent), "--dir", str(seed_dir), "--bind", TARGET,
                 "--port", str(SEED_PORT), "--up-limit", SEED_RATE, "--state-dir", str(tmp_path / "seed-state"),
                 "--quiet", "-v"], "listening on port", "seed")
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "run.toml",
                       client=base_client(state, tmp_path / "dl", bind="0.0.0.0", interface=netns.a1),
                       torrents=[{"source": str(torrent), "mode": "download"}])
    runner = RunnerInNs(netns.a, tmp_path / "runner", cfg, state)
    with tracker, seed, runner:
        def torrent_st() -> dict[str, object]:
            return runner.torrent_status("big.bin")

        def progress() -> float:
            return float(torrent_st().get("progress") or 0.0)  # type: ignore[arg-type]

        wait_until(lambda: progress() > 0.15, 30, "download under way", [runner, seed])
        assert "announce from 198.18.1.1" in tracker.log_text()
        assert netns.packets("via_a2") == 0 and netns.packets("via_a1") > 0

        netns.set_a1("down")
        reason = f"interface {netns.a1} is down"
        wait_until(lambda: runner.status().get("paused") == reason and torrent_st().get("paused") == reason,
                   15, "status: paused", [runner])
        # An observation window: while paused, nothing may leave through the other interface.
        at_pause = progress()
        window_end = time.monotonic() + 3.0
        while time.monotonic() < window_end:
            assert netns.packets("via_a2") == 0
            time.sleep(0.2)
        assert progress() < 1.0 and progress() - at_pause < 0.05, (at_pause, progress())

        netns.set_a1("up")
        netns.route_a1()
        wait_until(lambda: runner.status().get("paused") is None, 15, "status: resumed", [runner])
        wait_until(lambda: progress() >= 1.0, 60, "download complete after the interface returned",
                   [runner, seed])
        assert netns.packets("via_a2") == 0
        assert netns.packets("via_a1") > 0
