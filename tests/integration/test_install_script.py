"""tools/install.sh (the README's install steps) followed in a scratch root: users and groups in the
scratch /etc, directories and modes, a venv with minibt that runs, the config, the unit (checked by
``systemd-analyze verify`` when the `systemd` package is installed; no systemd runs here) and its
enable symlink.  pip fetches minibt's dependencies from the configured package index."""

from __future__ import annotations

import configparser
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from minibt.configfile import load_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "install.sh"


def ids(root: Path, table: str) -> dict[str, list[str]]:
    rows = (line.split(":") for line in (root / "etc" / table).read_text().splitlines() if line)
    return {r[0]: r for r in rows}


def scratch_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\npi:x:1000:1000::/home/pi:/bin/bash\n")
    (root / "etc" / "group").write_text("root:x:0:\npi:x:1000:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\npi:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("root:*::\npi:!::\n")
    for f in ("shadow", "gshadow"):
        os.chmod(root / "etc" / f, 0o640)
    return root


CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv must find its own minibt


def install(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT), "--root", str(root), "--python", sys.executable, "--admin", "pi"],
                          capture_output=True, text=True, timeout=600, check=False, env=CLEAN_ENV)


def test_install_script_in_a_scratch_root(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd (the script creates a system user)")
    root = scratch_root(tmp_path)
    r = install(root)
    if r.returncode != 0 and "pip install" in r.stdout.splitlines()[-1] and "connection" in r.stderr.lower():
        pytest.skip(f"no package index reachable for pip: {r.stderr[-300:]}")
    assert r.returncode == 0, r.stdout + r.stderr

    users, groups = ids(root, "passwd"), ids(root, "group")
    u = users["minibt"]
    assert u[5:] == ["/var/lib/minibt", "/usr/sbin/nologin"] and int(u[2]) < 1000  # a system user, no login
    uid, gid = int(u[2]), int(u[3])
    assert int(groups["minibt"][2]) == gid and groups["minibt"][3] == "pi"  # the admin reads `minibt status`

    def owner_mode(rel: str) -> tuple[int, int, int]:
        st = os.stat(root / rel)
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode("var/lib/minibt") == (uid, gid, 0o750)
    assert owner_mode("srv/torrents") == (uid, gid, 0o2775)
    assert owner_mode("srv/torrents/watch") == (uid, gid, 0o2775)
    assert owner_mode("etc/minibt/minibt.toml") == (0, gid, 0o640)

    cfg = load_config(str(root / "etc/minibt/minibt.toml"))
    assert (cfg.state_dir, cfg.download_dir, cfg.watch_dir) == ("/var/lib/minibt", "/srv/torrents", "/srv/torrents/watch")

    exe = root / "opt/minibt/bin/minibt"
    v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60, check=False, env=CLEAN_ENV)
    assert v.returncode == 0 and v.stdout.startswith("minibt "), v.stderr
    where = subprocess.run([str(root / "opt/minibt/bin/python"), "-c", "import minibt; print(minibt.__file__)"],
                           capture_output=True, text=True, timeout=60, check=True, cwd="/", env=CLEAN_ENV)
    assert where.stdout.startswith(str(root / "opt/minibt/lib/"))

    unit_path = root / "etc/systemd/system/minibt.service"
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/minibt.service") == "/etc/systemd/system/minibt.service"
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(unit_path)
    svc = unit["Service"]
    assert svc["ExecStart"].split()[:4] == ["/opt/minibt/bin/minibt", "run", "-c", "/etc/minibt/minibt.toml"]
    assert (svc["User"], svc["Group"], svc["StateDirectory"], svc["StateDirectoryMode"]) == ("minibt", "minibt", "minibt", "0750")
    assert svc["ReadWritePaths"] == "-/srv/torrents" and "remote-fs.target" in unit["Unit"]["After"]
    for path in ("/opt/minibt/bin/minibt", "/etc/minibt/minibt.toml", "/srv/torrents"):
        assert os.path.exists(str(root) + path), path

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        if os.environ.get("MINIBT_REQUIRE_CLIENTS") == "1":
            pytest.fail("systemd-analyze missing (.ci/run installs the systemd package)")
        return
    # verify checks that the commands exist on this machine: point them into the scratch root
    # (and at /bin/true where this container has no /bin/kill).
    text = unit_path.read_text().replace("/opt/minibt/", f"{root}/opt/minibt/")
    if not os.access("/bin/kill", os.X_OK):
        text = text.replace("/bin/kill -HUP", "/bin/true -HUP")
    (tmp_path / "minibt.service").write_text(text)
    out = subprocess.run([analyze, "verify", str(tmp_path / "minibt.service")],
                         capture_output=True, text=True, timeout=60, check=False)
    problems = [ln for ln in (out.stdout + out.stderr).splitlines() if "minibt.service" in ln]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
