"""``minibt run``: the process around the :class:`~minibt.runner.Runner` -- the config file, the
lock, logging, the memory budget, signals (SIGINT/SIGTERM stop, SIGHUP reloads), the event loop
and the exit code (runplan.py has the codes).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal

from minibt.admission import usable_policy
from minibt.budget import fit_budget, over_budget_message
from minibt.client import Client
from minibt.clock import local_seconds_of_day
from minibt.configfile import Config, load_config
from minibt.errors import ConfigError, EncryptionUnavailable
from minibt.runner import Runner, set_log_level
from minibt.runplan import EXIT_CONFIG, EXIT_FAIL, EXIT_LOCKED, EXIT_OK, EXIT_TIME_UP, seconds_until
from minibt.settings import BOOTSTRAP_ENV, Encryption, Mode, SessionConfig, Transport
from minibt.statusfile import RunLock
from minibt.utp_config import UtpConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

def _setup_logging(cfg: Config, verbose: int) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if cfg.log_file:
        os.makedirs(os.path.dirname(cfg.log_file) or ".", exist_ok=True)
        from logging.handlers import (  # with pickle: only for a log file
            RotatingFileHandler,
            WatchedFileHandler,
        )

        # Months unattended on an SD card: rotated at [log] max_size, two old files kept; 0: logrotate's job
        # (a file it renames is reopened)
        handler = (RotatingFileHandler(cfg.log_file, maxBytes=cfg.log_max_bytes, backupCount=2)
                   if cfg.log_max_bytes else WatchedFileHandler(cfg.log_file))
    else:
        handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    set_log_level("debug" if verbose >= 2 else cfg.log_level)


def run_main(config_path: str, *, once: bool, max_time_s: float | None, until_min: int | None,
             verbose: int = 0, port: int | None = None) -> int:
    """``minibt run``; returns the exit code."""
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        _stderr(str(e))
        return EXIT_CONFIG
    if port is not None:
        cfg = dataclasses.replace(cfg, listen_port=port)
    try:
        lock = RunLock(cfg.state_dir)
        locked = lock.acquire()
    except OSError as e:
        _stderr(f"cannot take the lock in {cfg.state_dir}: {e}")
        return EXIT_FAIL
    if not locked:
        _stderr(f"another minibt run holds {lock.path}; exiting (75)")
        return EXIT_LOCKED
    try:
        _setup_logging(cfg, verbose)
        return _run_locked(cfg, once=once, max_time_s=max_time_s, until_min=until_min)
    finally:
        lock.release()


def _run_locked(cfg: Config, *, once: bool, max_time_s: float | None, until_min: int | None) -> int:
    n = len([e for e in cfg.torrents if e.mode == Mode.DOWNLOAD])
    seeds = 0 if once else len(cfg.torrents) - n  # --once runs the downloads only
    metas = [e.meta for e in cfg.torrents if e.meta is not None]
    limits = fit_budget(cfg.memory_budget_bytes, torrents=n, max_connections=cfg.max_connections,
                        max_peers=cfg.max_peers_per_torrent, num_pieces=max((m.num_pieces for m in metas), default=0),
                        piece_length=max((m.piece_length for m in metas), default=0),
                        utp=Transport.UTP in cfg.transports, seeds=seeds, dht=cfg.dht,
                        encryption=any(p not in (None, Encryption.NONE)
                                       for p in (cfg.encryption, *(e.encryption for e in cfg.torrents))))
    warning = over_budget_message(limits, cfg.memory_budget_bytes, torrents=n, seeds=seeds)
    if warning is not None:
        log.warning("%s", warning)
        _stderr(warning)
    try:
        boot: tuple[tuple[str, int], ...] = ()
        if cfg.dht:  # the DHT service (and its list) only for a DHT, as `minibt download` does
            from minibt.dhtservice import bootstrap_nodes

            boot = bootstrap_nodes(cfg.dht_bootstrap, os.environ.get(BOOTSTRAP_ENV))
        usable_policy(cfg.encryption)
    except (ValueError, EncryptionUnavailable) as e:
        _stderr(str(e))
        return EXIT_CONFIG
    scfg = SessionConfig(max_connections=limits.max_connections, transports=cfg.transports,
                         upload_limit_bps=cfg.upload_limit_bps, download_limit_bps=cfg.download_limit_bps,
                         dht=cfg.dht, dht_bootstrap=boot, dht_read_only=cfg.dht_read_only,
                         encryption=cfg.encryption, holepunch=cfg.holepunch, pex=cfg.pex)
    try:
        client = Client(bind=cfg.bind, port=cfg.listen_port, state_dir=cfg.state_dir, config=scfg, interface=cfg.interface,
                        hash_threads=1 if cfg.memory_budget_bytes < (64 << 20) else 2,
                        utp_config=UtpConfig(send_buffer_bytes=limits.utp_buffer_bytes,
                                             reorder_buffer_bytes=limits.utp_buffer_bytes)
                        if limits.utp_buffer_bytes else None)
    except OSError as e:
        _stderr(f"cannot listen on {cfg.bind}:{cfg.listen_port}: {e.strerror or e}")
        return EXIT_FAIL
    deadline = None
    now = client.clock.now()
    if max_time_s is not None:
        deadline = now + max_time_s
    if until_min is not None:
        d2 = now + seconds_until(until_min, local_seconds_of_day(client.clock.wall()))
        deadline = d2 if deadline is None else min(deadline, d2)
    runner = Runner(cfg, client, once=once, deadline=deadline, limits=limits)

    def on_stop(signum: int, frame: Any) -> None:
        runner.stop_signal = signal.Signals(signum).name
        client.stop()

    def on_hup(signum: int, frame: Any) -> None:
        runner.reload_requested = True
        client.loop.wake()  # the loop may be waiting for a deadline minutes away

    old = {s: signal.signal(s, on_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    rc = EXIT_FAIL
    try:
        log.info("minibt run (%s) pid %d listening on port %d; limits %s", "once" if once else "daemon",
                 os.getpid(), client.port, limits)
        _stderr(f"run: listening on port {client.port}")
        runner.start()
        client.run(until=runner.done, on_tick=runner.tick, tick_deadline=runner.next_deadline)
        if runner.stop_signal is not None:
            log.info("%s: announcing 'stopped' and saving state", runner.stop_signal)
        # Judged before the shutdown turns every torrent to 'stopped'.
        once_rc = runner.once_result(client.clock.now())
        outcomes = runner.outcomes()
    finally:
        try:
            client.close()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            runner.stop_signal = runner.stop_signal or "exit"
            runner.save_state(force=True)
            runner.write_status()
    if once:
        rc = once_rc if once_rc is not None else EXIT_TIME_UP
        for o, job in zip(outcomes, [j for j in runner.jobs.values() if j.entry.mode == Mode.DOWNLOAD], strict=True):
            state = "complete" if o.complete else (f"error: {o.error}" if o.error else "incomplete, progress saved")
            _stderr(f"{job.name}: {state}")
    else:
        rc = EXIT_OK if runner.stop_signal != "exit" else EXIT_FAIL
    log.info("exit %d (peak RSS %.1f MiB)", rc, runner.peak_rss / (1 << 20))
    return rc


def _stderr(msg: str) -> None:
    import sys

    print("minibt: " + msg.replace("\n", "\\n"), file=sys.stderr, flush=True)
