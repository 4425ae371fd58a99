"""``python -m minibt seed|download ...`` as a child process, on the model of clients.Client.

Started and stopped by PID like the reference clients (own work directory, stderr in a log file, SIGTERM
then SIGKILL), so tests/integration/conftest.py's leak checks cover it too.  ``port`` is parsed from the
first stderr line ("<name>: <infohash> listening on port N").  Progress lines (non-tty form, printed at
the first tick and then every 10 s) are parsed by ``progress_lines()``.  ``wrap_argv`` wraps the command
line, e.g. ``NatNet.wrap(host)`` to run it inside a network namespace (tests/integration/natnet.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clients import LOOPBACK, START_TIMEOUT_S, Client, MadeTorrent, child_env, wait_until

LISTENING_RE = re.compile(r": ([0-9a-f]{40}) listening on port (\d+)$", re.M)
# cli.Progress, not a tty: "<name>: <state> <pct>%  down ... up ... peers N  ETA ..."
PROGRESS_RE = re.compile(r"^(?P<name>[^\n:]+): (?P<state>checking|downloading|seeding|stopped|error)\s+"
                         r"(?P<pct>[\d.]+)%", re.M)
# A seed is ready once its check is done (logged with -v) or, trusting resume data, once its first
# progress line already says "seeding".
SEED_READY_RE = re.compile(r"check done|^[^\n:]+: seeding\s", re.M)


@dataclass(frozen=True, slots=True)
class Progress:
    state: str
    percent: float


class MinibtProc(Client):
    """One minibt CLI process.  ``command`` is "seed" or "download"; ``data_dir`` is its --dir."""

    stop_timeout_s = 15.0  # shutdown waits up to 5 s for 'stopped' announces

    def __init__(self, workdir: Path, *, command: str, torrent: MadeTorrent | Path, data_dir: Path,
                 state_dir: Path | None = None, peers: Sequence[tuple[str, int]] = (),
                 bind: str = LOOPBACK, verbose: int = 1, timeout_s: float | None = None,
                 extra_args: Sequence[str] = (), label: str | None = None, port: int = 0,
                 wrap_argv: Callable[[list[str]], list[str]] | None = None) -> None:
        if command not in ("seed", "download"):
            raise ValueError(f"unknown minibt command {command!r}")
        self.name = label or f"minibt-{command}"
        super().__init__(workdir)
        self.command = command
        self.torrent_path = torrent.path if isinstance(torrent, MadeTorrent) else Path(torrent)
        self.data_dir = Path(data_dir)
        self.state_dir = Path(state_dir) if state_dir is not None else self.workdir / "state"
        self.peers = list(peers)
        self.bind = bind
        self.verbose = verbose
        self.timeout_s = timeout_s
        self.extra_args = list(extra_args)
        self.listen_port = port  # --port (0: any free one)
        self.wrap_argv = wrap_argv  # e.g. NatNet.wrap(host): run inside a network namespace
        self._port = 0
        self.info_hash = ""

    def _launch(self) -> None:
        argv = [sys.executable, "-m", "minibt", self.command, str(self.torrent_path),
                "--dir", str(self.data_dir), "--port", str(self.listen_port), "--bind", self.bind,
                "--state-dir", str(self.state_dir)]
        for host, port in self.peers:
            argv += ["--peer", f"{host}:{port}"]
        if self.timeout_s is not None:
            argv += ["--timeout", str(self.timeout_s)]
        if self.verbose:
            argv.append("-" + "v" * self.verbose)
        argv += self.extra_args
        if self.wrap_argv is not None:
            argv = self.wrap_argv(argv)
        self._spawn(argv)

    def _wait_ready(self) -> None:
        def listening() -> bool:
            m = LISTENING_RE.search(self.log_text())
            if m:
                self.info_hash, self._port = m.group(1), int(m.group(2))
            return m is not None

        self.wait_until(listening, START_TIMEOUT_S, "'listening on port' on stderr")
        if self.command == "seed":
            self.wait_seeding()

    def wait_seeding(self, timeout_s: float = START_TIMEOUT_S) -> None:
        self.wait_until(lambda: SEED_READY_RE.search(self.log_text()), timeout_s,
                        "seeding (check done or resume data trusted)")

    @property
    def port(self) -> int:
        if self._port <= 0:
            raise RuntimeError(f"{self.name} is not listening yet")
        return self._port

    def progress_lines(self) -> list[Progress]:
        return [Progress(m.group("state"), float(m.group("pct"))) for m in PROGRESS_RE.finditer(self.log_text())]

    def wait_exit(self, timeout_s: float) -> int:
        """Wait for the process to end on its own; returns its exit code (fails with log tails on timeout)."""
        wait_until(lambda: self.returncode() is not None, timeout_s, f"{self.name} to exit", [])
        rc = self.returncode()
        assert rc is not None
        return rc

    def terminate(self, timeout_s: float) -> tuple[int, float]:
        """SIGTERM; wait at most ``timeout_s`` for the exit.  Returns (exit code, seconds it took)."""
        proc = self._proc
        if proc is None:
            raise RuntimeError(f"{self.name} not started")
        if proc.poll() is not None:
            raise AssertionError(f"{self.name} had already exited with {proc.returncode}\n{self.log_tail()}")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {timeout_s} s after SIGTERM\n"
                                 + self.log_tail()) from None
        return rc, time.monotonic() - t0


def minibt_create(path: Path, out: Path, trackers: Sequence[str] = (), piece_length: int = 256 * 1024) -> str:
    """``minibt create``; returns its stdout ("wrote OUT: name, N pieces, info hash H")."""
    argv = [sys.executable, "-m", "minibt", "create", str(path), "-o", str(out),
            "--piece-size", str(piece_length)]
    for url in trackers:
        argv += ["--tracker", url]
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(argv, capture_output=True, env=child_env(), timeout=60, check=False)
    if r.returncode != 0:
        raise AssertionError(f"minibt create failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
    return r.stdout.decode()
