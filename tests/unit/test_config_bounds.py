"""Sizes, rates, durations and counts from the config file and the command line are bounded.

Found by fuzzing: 400-digit numbers gave inf or OverflowError, and "1" * 28 + "!" as a duration
made the regular expression backtrack for about 40 s.  Every case must now be refused at once with
a ConfigError naming the key (config file, exit 2, one line) or an argparse error (CLI, exit 2).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from minibt.cli import main
from minibt.configfile import parse_config, parse_peer_addr
from minibt.errors import ConfigError
from minibt.units import MAX_DURATION_S, MAX_RATE_BPS, MAX_SIZE_BYTES, parse_duration, parse_rate, parse_size

HUGE = "9" * 400
BACKTRACK = "1" * 28 + "!"
FAST_S = 0.1  # the property under test: these used to take seconds (backtracking) or crash


def _timed(fn: object, *args: object) -> float:
    start = time.perf_counter()
    with pytest.raises(ValueError):
        fn(*args)  # type: ignore[operator]
    return time.perf_counter() - start


@pytest.mark.parametrize("text", [BACKTRACK, "1" * 24 + "!", "1 " * 30 + "!", "1" + " " * 3000 + "!", "1.1.1.1.1.1.1.1"])
def test_duration_refused_in_linear_time(text: str) -> None:
    assert _timed(parse_duration, text) < FAST_S


@pytest.mark.parametrize("text", ["1" + " " * 3000 + "!", "1 " + " " * 3000 + "kib!", BACKTRACK])
def test_size_and_rate_refused_in_linear_time(text: str) -> None:
    assert _timed(parse_size, text) < FAST_S
    assert _timed(parse_rate, text) < FAST_S


@pytest.mark.parametrize("value", [HUGE, int(HUGE), "inf", "nan", "1e400", float("inf"), float("nan"), -1, "-1"])
def test_duration_huge_or_not_finite_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [HUGE, int(HUGE), "inf", "nan", "1e400", "2PiB", -1, True])
def test_size_and_rate_huge_refused(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_rate(value)  # type: ignore[arg-type]


def test_limits_are_inclusive_and_units_still_work() -> None:
    assert parse_size(MAX_SIZE_BYTES) == MAX_SIZE_BYTES
    assert parse_size("1024GiB") == 1 << 40
    with pytest.raises(ValueError, match="limit"):
        parse_size(MAX_SIZE_BYTES + 1)
    assert parse_rate(MAX_RATE_BPS) == MAX_RATE_BPS
    with pytest.raises(ValueError, match="limit"):
        parse_rate(MAX_RATE_BPS + 1)
    assert parse_duration(MAX_DURATION_S) == MAX_DURATION_S
    assert parse_duration("36500d") == MAX_DURATION_S
    with pytest.raises(ValueError, match="100 years"):
        parse_duration("36501d")
    assert parse_duration("1h 30m 15s") == 5415 and parse_duration("1.5m") == 90 and parse_duration("2 min") == 120
    assert parse_rate("1.5 MiB/s") == 1.5 * (1 << 20) and parse_size(".5k") == 512


def test_peer_address_port_range() -> None:
    assert parse_peer_addr("[::1]:7000") == ("::1", 7000)
    for bad in ("127.0.0.1:99999", "127.0.0.1:-1", "[zz]:80", "host:" + HUGE):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_peer_addr(bad)


MAGNET = "magnet:?xt=urn:btih:" + "ab" * 20


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (f'[client]\nupload_limit = "{HUGE}"\n', "client.upload_limit"),
        (f"[client]\ndownload_limit = {HUGE}\n", "client.download_limit"),
        (f'[client]\nmemory_budget = "{HUGE}MiB"\n', "client.memory_budget"),
        (f"[client]\nmax_connections = {HUGE}\n", "client.max_connections"),
        (f"[client]\nlisten_port = {HUGE}\n", "client.listen_port"),
        (f'[client]\nwatch_interval = "{HUGE}"\n', "client.watch_interval"),
        (f"[client]\nstatus_interval = {HUGE}\n", "client.status_interval"),
        ("[client]\nresume_interval = 1e400\n", "client.resume_interval"),
        ("[client]\nresume_interval = nan\n", "client.resume_interval"),
        (f'[client]\ndisk_retry_interval = "{BACKTRACK}"\n', "client.disk_retry_interval"),
        (f'[schedule]\nalt_upload_limit = "{HUGE}"\n', "schedule.alt_upload_limit"),
        (f'[[torrent]]\nsource = "{MAGNET}"\nseed_time = "{HUGE}"\n', "torrent[0].seed_time"),
        (f'[[torrent]]\nsource = "{MAGNET}"\nseed_time = {HUGE}\n', "torrent[0].seed_time"),
        (f'[[torrent]]\nsource = "{MAGNET}"\nseed_ratio = {HUGE}\n', "torrent[0].seed_ratio"),
        (f'[[torrent]]\nsource = "{MAGNET}"\nseed_ratio = inf\n', "torrent[0].seed_ratio"),
        (f'[[torrent]]\nsource = "{MAGNET}"\npeers = ["127.0.0.1:99999"]\n', "torrent[0].peers"),
        (f'[[torrent]]\nsource = "{MAGNET}"\npeers = ["127.0.0.1:-1"]\n', "torrent[0].peers"),
        ('[client]\nbind = "0.0.0.0\\u0000"\n', "client.bind"),
        ('[client]\nbind = "zz::"\n', "client.bind"),
    ],
)
def test_config_file_refuses_with_key(tmp_path: Path, body: str, key: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_config(body, "c.toml", base_dir=str(tmp_path))
    assert time.perf_counter() - start < FAST_S
    assert info.value.key == key, str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


@pytest.mark.parametrize(
    "body",
    ["a = " + "9" * 5000 + "\n", "a = " + "[" * 100_000 + "]" * 100_000 + "\n", "a." * 100_000 + "b = 1\n",
     "[" + "a." * 100_000 + "b]\n"],
)
def test_config_file_toml_bombs_refused_fast(tmp_path: Path, body: str) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError):
        parse_config(body, "c.toml", base_dir=str(tmp_path))
    assert time.perf_counter() - start < 1.0


def test_run_with_bad_config_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[client]\nstate_dir = "st"\nwatch_interval = "{BACKTRACK}"\n')
    start = time.perf_counter()
    assert main(["run", "-c", str(cfg), "--once"]) == 2
    assert time.perf_counter() - start < 1.0
    err = capsys.readouterr().err.strip()
    assert "client.watch_interval" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "-c", "x.toml", "--once", "--max-time", BACKTRACK],
        ["run", "-c", "x.toml", "--once", "--max-time", HUGE],
        ["run", "-c", "x.toml", "--once", "--max-time", "inf"],
        ["run", "-c", "x.toml", "--port", "99999"],
        ["run", "-c", "x.toml", "--port", HUGE],
        ["download", "t.torrent", "--dir", "d", "--up-limit", HUGE],
        ["download", "t.torrent", "--dir", "d", "--down-limit", "1" + " " * 3000 + "!"],
        ["download", "t.torrent", "--dir", "d", "--cache", HUGE],
        ["download", "t.torrent", "--dir", "d", "--timeout", HUGE],
        ["download", "t.torrent", "--dir", "d", "--timeout", "nan"],
        ["download", "t.torrent", "--dir", "d", "--timeout", "-5"],
        ["download", "t.torrent", "--dir", "d", "--port", "99999"],
        ["download", "t.torrent", "--dir", "d", "--port", "-1"],
        ["download", "t.torrent", "--dir", "d", "--max-peers", HUGE],
        ["download", "t.torrent", "--dir", "d", "--max-peers", "0"],
        ["download", "t.torrent", "--dir", "d", "--peer", "127.0.0.1:99999"],
        ["download", "t.torrent", "--dir", "d", "--peer", "[zz]:80"],
        ["create", "p", "-o", "o.torrent", "--tracker", "udp://127.0.0.1:99999"],
        ["create", "p", "-o", "o.torrent", "--tracker", "http://[::1"],
        ["create", "p", "-o", "o.torrent", "--piece-size", HUGE],
    ],
)
def test_cli_refuses_with_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    start = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert time.perf_counter() - start < 1.0
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
