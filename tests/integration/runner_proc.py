"""``python -m minibt run -c FILE [--once ...]`` as a child process, plus a TOML config writer.

Started and stopped by PID through clients.Client (leak checks included).  Ready once stderr has
"run: listening on port N".  ``status()`` reads the runner's status JSON from its state dir.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clients import START_TIMEOUT_S, Client, child_env, wait_until

RUN_LISTENING_RE = re.compile(r"run: listening on port (\d+)$", re.M)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_config(path: Path, *, client: Mapping[str, Any] | None = None, log: Mapping[str, Any] | None = None,
                 schedule: Mapping[str, Any] | None = None, torrents: Sequence[Mapping[str, Any]] = ()) -> Path:
    lines: list[str] = []
    for name, table in (("client", client), ("log", log), ("schedule", schedule)):
        if table:
            lines.append(f"[{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for t in torrents:
        lines.append("[[torrent]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in t.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def base_client(state_dir: Path, download_dir: Path, **extra: Any) -> dict[str, Any]:
    """Loopback, any port, short intervals so tests see status quickly."""
    d: dict[str, Any] = {"listen_port": 0, "bind": "127.0.0.1", "state_dir": str(state_dir),
                         "download_dir": str(download_dir), "status_interval": 1, "resume_interval": 1,
                         "disk_retry_interval": 1, "watch_interval": 1, "dht": False}
    d.update(extra)
    return d


class RunnerProc(Client):
    """One ``minibt run`` process."""

    stop_timeout_s = 15.0

    def __init__(self, workdir: Path, config: Path, state_dir: Path, *, once: bool = False,
                 args: Sequence[str] = (), label: str = "minibt-run", verbose: int = 1) -> None:
        self.name = label
        super().__init__(workdir)
        self.config = config
        self.state_dir = state_dir
        self.once = once
        self.args = list(args)
        self.verbose = verbose
        self._port = 0

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "minibt", "run", "-c", str(self.config)]
        if self.once:
            argv.append("--once")
        if self.verbose:
            argv.append("-" + "v" * self.verbose)
        return argv + self.args

    def _launch(self) -> None:
        self._spawn(self.argv())

    def spawn(self) -> None:
        """Start the process without waiting for it to listen (two runs started at the same moment)."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        self._launch()

    def _wait_ready(self) -> None:
        def listening() -> bool:
            m = RUN_LISTENING_RE.search(self.log_text())
            if m:
                self._port = int(m.group(1))
            return m is not None

        self.wait_until(listening, START_TIMEOUT_S, "'run: listening on port' on stderr")

    @property
    def port(self) -> int:
        if self._port <= 0:
            raise RuntimeError(f"{self.name} is not listening yet")
        return self._port

    def status(self) -> dict[str, Any]:
        try:
            d = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}
        return d if isinstance(d, dict) else {}

    def torrent_status(self, name: str) -> dict[str, Any]:
        for t in self.status().get("torrents", []):
            if t.get("name") == name:
                return dict(t)
        return {}

    def wait_exit(self, timeout_s: float) -> int:
        wait_until(lambda: self.returncode() is not None, timeout_s, f"{self.name} to exit", [self])
        rc = self.returncode()
        assert rc is not None
        return rc

    def signal(self, sig: int) -> None:
        proc = self._proc
        assert proc is not None and proc.poll() is None, f"{self.name} is not running\n{self.log_tail()}"
        proc.send_signal(sig)

    def terminate(self, timeout_s: float) -> tuple[int, float]:
        t0 = time.monotonic()
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout_s), time.monotonic() - t0

    def kill9(self) -> None:
        proc = self._proc
        assert proc is not None
        proc.kill()
        proc.wait(timeout=10)


def run_cli(argv: Sequence[str], timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m minibt ARGV`` to completion (for short commands: status, bad configs, a locked run)."""
    return subprocess.run([sys.executable, "-m", "minibt", *argv], capture_output=True, text=True,
                          env=child_env(), timeout=timeout_s, check=False)
