"""CLI commands that need no network: create, info, verify, and the progress display."""

from __future__ import annotations

import argparse
import gc
import io
import random
import weakref
from pathlib import Path

import pytest

from minibt import cli, configfile, magnet, units, urls
from minibt.cli import (
    Progress,
    human_bytes,
    human_duration,
    main,
    parse_duration_arg,
    parse_peer,
    parse_rate,
    parse_size,
)
from minibt.errors import MagnetError
from minibt.metainfo import load_metainfo


def make_tree(root: Path) -> Path:
    rng = random.Random(5)
    d = root / "payload"
    (d / "sub").mkdir(parents=True)
    (d / "a.bin").write_bytes(rng.randbytes(100_000))
    (d / "sub" / "b.bin").write_bytes(rng.randbytes(70_001))
    return d


def test_create_then_info_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_tree(tmp_path)
    out = tmp_path / "t.torrent"
    rc = main(["create", str(d), "-o", str(out), "--tracker", "http://127.0.0.1:1/announce",
               "--tracker", "udp://127.0.0.1:2", "--piece-size", "16KiB", "--private", "--comment", "hi"])
    assert rc == 0
    meta = load_metainfo(str(out))
    assert meta.piece_length == 16384
    assert meta.private
    assert meta.announce_tiers == (("http://127.0.0.1:1/announce",), ("udp://127.0.0.1:2",))
    assert [f.path for f in meta.files] == [("a.bin",), ("sub", "b.bin")]
    assert meta.creation_date is not None and meta.creation_date > 1_600_000_000
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert meta.info_hash.hex() in text
    assert "sub/b.bin" in text or "sub" in text


def test_create_rejects_bad_piece_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_tree(tmp_path)
    rc = main(["create", str(d), "-o", str(tmp_path / "t.torrent"), "--piece-size", "20000"])
    assert rc == 2
    assert capsys.readouterr().err.startswith("minibt: ")
    assert not (tmp_path / "t.torrent").exists()


def test_verify_good_then_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_tree(tmp_path)
    out = tmp_path / "t.torrent"
    assert main(["create", str(d), "-o", str(out), "--piece-size", "16KiB"]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--dir", str(tmp_path)]) == 0
    assert "11/11 pieces OK" in capsys.readouterr().out
    # Flip one byte in the second file: piece (100000 + 5) // 16384 = 6 must fail, nothing else.
    b = d / "sub" / "b.bin"
    data = bytearray(b.read_bytes())
    data[5] ^= 0xFF
    b.write_bytes(bytes(data))
    assert main(["verify", str(out), "--dir", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "10/11 pieces OK" in text
    assert "bad pieces: 6" in text


def test_verify_missing_data_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_tree(tmp_path)
    out = tmp_path / "t.torrent"
    assert main(["create", str(d), "-o", str(out)]) == 0
    (d / "a.bin").unlink()
    capsys.readouterr()
    assert main(["verify", str(out), "--dir", str(tmp_path)]) == 1


def test_parse_peer() -> None:
    assert parse_peer("127.0.0.1:6881") == ("127.0.0.1", 6881)
    assert parse_peer("[::1]:51413") == ("::1", 51413)
    import argparse

    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:70000", ":80", "h:x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_peer(bad)


def test_human_units() -> None:
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 * 2**30) == "3.0 GiB"
    assert human_duration(3661) == "01:01:01"
    assert human_duration(float("inf")) == "--:--:--"


class _FakeTorrent:
    class meta:  # noqa: N801 - mimics Torrent.meta
        name = "demo"

    def __init__(self) -> None:
        self.st = {"progress": 0.5, "rate_down": 1024.0 * 1024, "rate_up": 0.0, "bytes_left": 10 * 2**20,
                   "state": "downloading", "peers": 3, "checked": 0, "num_pieces": 10}

    def status(self, now: float) -> dict[str, object]:
        return self.st


class _Out(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_progress_bar_on_terminal() -> None:
    out = _Out(tty=True)
    p = Progress(_FakeTorrent(), out)  # type: ignore[arg-type]
    p(0.0)
    p(0.1)  # too soon: nothing new
    text = out.getvalue()
    assert text.count("\r") == 1
    assert "[##########----------]" in text
    assert "50.0%" in text and "1.0 MiB/s" in text and "peers 3" in text and "ETA 00:00:10" in text


def test_progress_plain_lines_when_not_a_terminal() -> None:
    out = _Out(tty=False)
    p = Progress(_FakeTorrent(), out)  # type: ignore[arg-type]
    p(0.0)
    p(5.0)  # within the 10 s interval
    p(10.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert all(line.startswith("demo: downloading") and "\r" not in line for line in lines)


# ---------------------------------------------------------------------- rate limits (issue 3)


def test_parse_rate() -> None:
    from minibt.cli import parse_rate

    assert parse_rate("500KiB") == 500 * 1024
    assert parse_rate("2MiB") == 2 * 1024 * 1024
    assert parse_rate("1.5m") == 1.5 * 1024 * 1024
    assert parse_rate("300kB/s") == 300_000
    assert parse_rate(" 1G ") == 1 << 30
    assert parse_rate("1000") == 1000
    assert parse_rate("0") is None and parse_rate("0KiB") is None  # 0 = unlimited
    for bad in ("", "fast", "-1", "1 parsec", "2MiB/h", "1e6"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rate(bad)


def test_rate_limit_options_reach_the_session_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import minibt.client
    from minibt.settings import SessionConfig

    out = tmp_path / "t.torrent"
    assert main(["create", str(make_tree(tmp_path)), "-o", str(out)]) == 0
    seen: list[SessionConfig] = []

    class NoClient:
        def __init__(self, *, config: SessionConfig, **kw: object) -> None:
            seen.append(config)
            raise OSError("not listening in this test")

    monkeypatch.setattr(minibt.client, "Client", NoClient)  # cli imports it when a transfer starts
    argv = [str(out), "--dir", str(tmp_path / "dl"), "--port", "0", "--state-dir", str(tmp_path / "st")]
    assert main(["download", *argv, "--up-limit", "500KiB", "--down-limit", "2MiB"]) == 1
    assert main(["seed", str(out), "--dir", str(tmp_path), "--port", "0", "--up-limit", "1MiB"]) == 1
    assert main(["download", *argv]) == 1
    assert [(c.upload_limit_bps, c.download_limit_bps) for c in seen] == [
        (500 * 1024, 2 * 1024 * 1024), (1024 * 1024, None), (None, None)]
    with pytest.raises(SystemExit) as e:
        main(["download", *argv, "--down-limit", "lots"])
    assert e.value.code == 2
    capsys.readouterr()


def _outcome(parse: object, text: str) -> object:
    try:
        return parse(text)  # type: ignore[operator]
    except (ValueError, argparse.ArgumentTypeError, MagnetError):
        return "error"


SIZES = ["1G", "1GiB", "96MiB", "512k", ".5k", "1000", "1.5 MiB", "0", "-1", "1T", "1X", "", "1e3", "99999G"]
RATES = ["500KiB", "2MiB", "300kB/s", "1.5 MiB/s", "1000", "0", "1G", "-5", "fast", "1 M /s"]
DURATIONS = ["90", "90s", "15m", "2h", "1d", "1h30m", "1h 30m 15s", "1.5m", "2 min", "36501d", "x", "-1", "1w"]
PEERS = ["1.2.3.4:6881", "[::1]:7000", "host.example:80", "Host.Example.:80", "[::ffff:1.2.3.4]:5",
         "1.2.3.4", "1.2.3.4:0", "127.0.0.1:99999", "::1:80", "[zz]:80", "host:", "a b:80"]


@pytest.mark.parametrize("text", SIZES)
def test_cli_size_accepts_what_the_config_accepts(text: str) -> None:
    assert _outcome(parse_size, text) == _outcome(units.parse_size, text)


@pytest.mark.parametrize("text", RATES)
def test_cli_rate_accepts_what_the_config_accepts(text: str) -> None:
    assert _outcome(parse_rate, text) == _outcome(units.parse_rate, text)


@pytest.mark.parametrize("text", DURATIONS)
def test_cli_duration_accepts_what_the_config_accepts(text: str) -> None:
    expected = _outcome(units.parse_duration, text)
    assert _outcome(parse_duration_arg, text) == (expected if expected != 0 else "error")  # CLI: > 0


@pytest.mark.parametrize("text", PEERS)
def test_peer_address_is_read_the_same_everywhere(text: str) -> None:
    """--peer, the config file's peers and a magnet's x.pe all go through urls.parse_host_port."""
    expected = _outcome(urls.parse_host_port, text)
    assert _outcome(parse_peer, text) == expected
    assert _outcome(configfile.parse_peer_addr, text) == expected
    assert _outcome(magnet.parse_peer_address, text) == expected


def test_version_and_info_do_not_load_the_client() -> None:
    """Start-up (issue 15): `minibt --version` and `minibt info` import neither the client, the
    session, the loop nor uTP (package names load on first use, commands import what they run)."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[2])
    code = (
        "import sys, io, contextlib\n"
        "from minibt.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        "        main(['--version'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('minibt.client', 'minibt.session', 'minibt.loop', 'minibt.utp', 'minibt.torrent',"
        " 'minibt.dht', 'ssl') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": root}, check=True)
    assert out.stdout.strip() == ""


def test_run_needs_once_for_max_time_and_until(capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--max-time", "2h"], ["--until", "06:00"]):
        with pytest.raises(SystemExit) as e:
            cli.main(["run", "-c", "minibt.toml", *extra])
        assert e.value.code == 2
        assert "--max-time and --until need --once" in capsys.readouterr().err


def test_the_argument_parser_is_freed_before_a_transfer_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: the parser and its parts (every command's arguments, in reference cycles) are collected
    before the transfer sets up, so their memory is reused rather than held for the whole download."""
    made: list[weakref.ref[argparse.ArgumentParser]] = []
    build = cli.build_parser

    def recording() -> argparse.ArgumentParser:
        parser = build()
        made.append(weakref.ref(parser))
        return parser

    def parts() -> int:  # pytest's own parser's among them
        return sum(isinstance(o, (argparse.Action, argparse._ActionsContainer)) for o in gc.get_objects())

    seen: list[tuple[bool, int]] = []

    def transfer(args: argparse.Namespace) -> int:
        seen.append((made[0]() is not None, parts()))
        return 0

    monkeypatch.setattr(cli, "build_parser", recording)
    monkeypatch.setattr(cli, "cmd_transfer", transfer)
    gc.collect()
    before = parts()
    gc.disable()  # no automatic collection may stand in for the one main() makes
    try:
        assert cli.main(["download", "x.torrent", "--dir", "d"]) == 0
    finally:
        gc.enable()
    assert seen == [(False, before)]
