"""configfile.py: the example file is the default; every kind of mistake names the file, the key and what was expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from minibt.configfile import (
    DEFAULT_MEMORY_BUDGET,
    Config,
    TimeWindow,
    load_config,
    parse_config,
    parse_window,
)
from minibt.errors import ConfigError
from minibt.metainfo import create_torrent
from minibt.units import parse_duration, parse_rate, parse_size

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "minibt.toml"


@pytest.fixture
def torrent_file(tmp_path: Path) -> Path:
    data = tmp_path / "data" / "payload.bin"
    data.parent.mkdir()
    data.write_bytes(bytes(range(256)) * 300)
    out = tmp_path / "x.torrent"
    out.write_bytes(create_torrent(str(data), trackers=[], piece_length=16384))
    return out


def err(text: str, tmp_path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, str(tmp_path / "c.toml"), base_dir=str(tmp_path))
    return ei.value


def test_example_file_is_exactly_the_builtin_default(tmp_path: Path) -> None:
    example = parse_config(EXAMPLE.read_text(), "example", base_dir=str(tmp_path))
    empty = parse_config("", "empty", base_dir=str(tmp_path))
    assert dataclasses.replace(example, path=None) == dataclasses.replace(empty, path=None)
    # ... and those values are the dataclass defaults, paths expanded
    d = Config()
    assert example.listen_port == d.listen_port == 6881
    assert example.memory_budget_bytes == DEFAULT_MEMORY_BUDGET == 96 << 20
    assert example.transports == ("tcp", "utp") and example.torrents == ()
    assert example.watch_dir is None and example.log_file is None and example.on_complete is None
    assert example.state_dir == str(Path("~/.local/state/minibt").expanduser())


def test_load_example_via_file(tmp_path: Path) -> None:
    cfg = load_config(str(EXAMPLE))
    assert cfg.path == str(EXAMPLE) and cfg.status_interval_s == 5.0


def test_full_config_parses_into_typed_values(tmp_path: Path, torrent_file: Path) -> None:
    (tmp_path / "watch").mkdir()
    text = f"""
[client]
listen_port = 0
state_dir = "state"
download_dir = "dl"
upload_limit = "500KiB"
download_limit = 2000000
memory_budget = "64MiB"
transports = ["utp"]
watch_dir = "watch"
watch_interval = "1m"
watch_seed_ratio = 1.5
watch_seed_time = "2d"
on_complete = ["/bin/echo", "done"]
[log]
level = "DEBUG"
file = "log/minibt.log"
max_size = "1MiB"
[schedule]
download_windows = ["22:00-06:00", "12:00-13:00"]
alt_rate_windows = ["08:00-24:00"]
alt_upload_limit = "100KiB"
[[torrent]]
source = "{torrent_file.name}"
dir = "data"
mode = "seed"
seed_ratio = 2
seed_time = "1h30m"
peers = ["127.0.0.1:6881", "[::1]:7000"]
on_complete = []
"""
    cfg = parse_config(text, str(tmp_path / "c.toml"))
    assert cfg.listen_port == 0 and cfg.state_dir == str(tmp_path / "state")
    assert cfg.upload_limit_bps == 500 * 1024 and cfg.download_limit_bps == 2e6
    assert cfg.memory_budget_bytes == 64 << 20 and cfg.transports == ("utp",)
    assert cfg.watch_dir == str(tmp_path / "watch") and cfg.watch_interval_s == 60
    assert cfg.watch_seed_ratio == 1.5 and cfg.watch_seed_time_s == 2 * 86400
    assert cfg.on_complete == ("/bin/echo", "done") and cfg.log_level == "debug"
    assert cfg.log_file == str(tmp_path / "log" / "minibt.log") and cfg.log_max_bytes == 1 << 20
    assert cfg.schedule.download_windows == (TimeWindow(22 * 60, 6 * 60), TimeWindow(12 * 60, 13 * 60))
    assert cfg.schedule.alt_upload_limit_bps == 100 * 1024 and cfg.schedule.alt_download_limit_bps is None
    (t,) = cfg.torrents
    assert t.source == str(torrent_file) and t.dir == str(tmp_path / "data") and t.mode == "seed"
    assert t.seed_ratio == 2.0 and t.seed_time_s == 5400 and t.on_complete == ()
    assert t.peers == (("127.0.0.1", 6881), ("::1", 7000))
    assert t.meta is not None and t.key == (t.meta.info_hash.hex(), t.dir)


def test_torrent_dir_defaults_to_download_dir_and_mode_to_download(tmp_path: Path, torrent_file: Path) -> None:
    cfg = parse_config(f'[client]\ndownload_dir = "dl"\n[[torrent]]\nsource = "{torrent_file}"\n', "c",
                       base_dir=str(tmp_path))
    assert cfg.torrents[0].dir == str(tmp_path / "dl") and cfg.torrents[0].mode == "download"
    assert cfg.torrents[0].seed_ratio is None and cfg.torrents[0].on_complete is None


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[client]\nlisten_prot = 1\n", "client.listen_prot", "unknown key"),
        ("[clint]\n", "clint", "unknown key"),
        ("[client]\nlisten_port = 70000\n", "client.listen_port", "port number 0..65535"),
        ("[client]\nlisten_port = true\n", "client.listen_port", "got a boolean"),
        ("[client]\nlisten_port = \"6881\"\n", "client.listen_port", "got str"),
        ("[client]\nmax_connections = 0\n", "client.max_connections", "1..10000"),
        ("[client]\nupload_limit = \"fast\"\n", "client.upload_limit", "a rate such as"),
        ("[client]\nmemory_budget = \"8MiB\"\n", "client.memory_budget", "at least 32MiB"),
        ("[client]\ntransports = [\"tcp\", \"tcp\"]\n", "client.transports", "distinct"),
        ("[client]\ntransports = [\"quic\"]\n", "client.transports", "tcp"),
        ("[client]\nstatus_interval = \"0s\"\n", "client.status_interval", "at least 1s"),
        ("[client]\nwatch_interval = \"soon\"\n", "client.watch_interval", "duration"),
        ("[client]\nwatch_seed_ratio = -1\n", "client.watch_seed_ratio", ">= 0"),
        ("[client]\nwatch_seed_ratio = nan\n", "client.watch_seed_ratio", ">= 0"),
        ("[client]\nwatch_seed_ratio = \"2\"\n", "client.watch_seed_ratio", "a number"),
        ("[client]\nwatch_seed_time = \"forever\"\n", "client.watch_seed_time", "duration"),
        ("[client]\non_complete = \"rm -rf /\"\n", "client.on_complete", "list of strings"),
        ("[client]\non_complete = [\"\"]\n", "client.on_complete", "first item is the program"),
        ("[log]\nlevel = \"loud\"\n", "log.level", "debug, info, warning, error"),
        ("[log]\nmax_size = \"1KiB\"\n", "log.max_size", "at least 64KiB"),
        ("[log]\nmax_size = \"big\"\n", "log.max_size", "a size such as"),
        ("[schedule]\ndownload_windows = [\"7-9\"]\n", "schedule.download_windows", "HH:MM"),
        ("[schedule]\ndownload_windows = [\"09:00-09:00\"]\n", "schedule.download_windows", "empty window"),
        ("[schedule]\ndownload_windows = \"01:00-02:00\"\n", "schedule.download_windows", "list"),
        ("[[torrent]]\nmode = \"seed\"\n", "torrent[0].source", "missing"),
        ("[[torrent]]\nsource = \"absent.torrent\"\n", "torrent[0].source", "no such file"),
        ("[[torrent]]\nsource = \"magnet:?xt=urn:btih:xyz\"\n", "torrent[0].source", "valid magnet URI"),
        ("torrent = 3\n", "torrent", "array of tables"),
        ("[client\n", None, "not valid TOML"),
    ],
)
def test_mistakes_are_reported_with_file_key_and_expectation(
    tmp_path: Path, text: str, key: str | None, fragment: str
) -> None:
    e = err(text, tmp_path)
    assert e.file == str(tmp_path / "c.toml")
    assert e.key == key
    assert fragment in e.msg, e.msg
    assert str(tmp_path / "c.toml") in str(e) and (key is None or key in str(e))


@pytest.mark.parametrize(
    ("extra", "key", "fragment"),
    [
        ('mode = "leech"', "torrent[0].mode", "seed, download"),
        ("seed_ratio = -1", "torrent[0].seed_ratio", ">= 0"),
        ('seed_ratio = "2"', "torrent[0].seed_ratio", "a number"),
        ('seed_time = "forever"', "torrent[0].seed_time", "duration"),
        ('peers = ["localhost"]', "torrent[0].peers", "HOST:PORT"),
        ('files = ["a.bin"]', "torrent[0].files", "no file 'a.bin' in the torrent (its files: 'payload.bin')"),
        ("files = []", "torrent[0].files", "at least one file"),
        ('files = ["payload.bin"]\nmode = "seed"\ndir = "."', "torrent[0].files", "mode = \"download\""),
        ("colour = 1", "torrent[0].colour", "unknown key"),
    ],
)
def test_torrent_entry_mistakes(tmp_path: Path, torrent_file: Path, extra: str, key: str, fragment: str) -> None:
    e = err(f'[[torrent]]\nsource = "{torrent_file}"\n{extra}\n', tmp_path)
    assert e.key == key and fragment in e.msg, str(e)


def test_missing_seed_dir_and_watch_dir_are_not_config_errors(tmp_path: Path, torrent_file: Path) -> None:
    """A share that mounts after the daemon started: the runner waits for it (runplan.dir_problem)."""
    (tmp_path / "c.toml").write_text(
        f'[client]\nwatch_dir = "share/watch"\n[[torrent]]\nsource = "{torrent_file}"\ndir = "share/data"\nmode = "seed"\n'
    )
    cfg = load_config(str(tmp_path / "c.toml"))
    assert cfg.watch_dir == str(tmp_path / "share" / "watch")
    assert cfg.torrents[0].dir == str(tmp_path / "share" / "data") and cfg.torrents[0].mode == "seed"


def test_same_torrent_twice_is_refused(tmp_path: Path, torrent_file: Path) -> None:
    e = err(f'[[torrent]]\nsource = "{torrent_file}"\n[[torrent]]\nsource = "{torrent_file}"\ndir = "other"\n',
            tmp_path)
    assert e.key == "torrent[1].source" and "torrent[0]" in e.msg


def test_not_a_torrent_file(tmp_path: Path) -> None:
    (tmp_path / "junk.torrent").write_bytes(b"not bencode")
    e = err('[[torrent]]\nsource = "junk.torrent"\n', tmp_path)
    assert e.key == "torrent[0].source" and "not a valid .torrent" in e.msg


def test_magnet_source_validates_and_cannot_be_seeded(tmp_path: Path) -> None:
    uri = "magnet:?xt=urn:btih:" + "ab" * 20 + "&dn=x"
    cfg = parse_config(f'[[torrent]]\nsource = "{uri}"\n', "c", base_dir=str(tmp_path))
    assert cfg.torrents[0].is_magnet and cfg.torrents[0].key[0] == "ab" * 20
    e = err(f'[[torrent]]\nsource = "{uri}"\nmode = "seed"\ndir = "."\n', tmp_path)
    assert e.key == "torrent[0].mode"


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(str(tmp_path / "absent.toml"))
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[log]\nfile = "\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(str(bad))


def test_value_parsers() -> None:
    assert parse_size("96MiB") == 96 << 20 and parse_size("1.5k") == 1536 and parse_size(7) == 7
    assert parse_rate(0) is None and parse_rate("2MB") == 2e6
    assert parse_duration("1h30m") == 5400 and parse_duration(90) == 90 and parse_duration("2d") == 172800
    for bad in ("", "5 weeks", "-3", "1h-2m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    w = parse_window("22:00-06:00")
    assert w.contains(23 * 60) and w.contains(5 * 60 + 59) and not w.contains(6 * 60) and not w.contains(12 * 60)
    day = parse_window("00:00-24:00")
    assert all(day.contains(m) for m in (0, 719, 1439))
    assert str(parse_window("8:05-9:00")) == "08:05-09:00"
    for bad in ("24:00-01:00", "10:60-11:00", "10:00", "12:00-12:00"):
        with pytest.raises(ValueError):
            parse_window(bad)
