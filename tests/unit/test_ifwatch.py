"""ifwatch.py: when networking pauses, resumes and rebinds for a bound interface (pure, FakeClock)."""

from __future__ import annotations

import argparse
import socket

import pytest
from helpers import FakeClock

from minibt.cli import parse_bind, parse_interface
from minibt.configfile import parse_config
from minibt.errors import ConfigError
from minibt.ifwatch import InterfaceWatch, LinkState, valid_interface_name
from minibt.netif import Source

UP = LinkState(7, True)
DOWN = LinkState(7, False)
GONE = LinkState(None, False)


def started(clock: FakeClock, state: LinkState = UP) -> InterfaceWatch:
    w = InterfaceWatch("wg0")
    dec = w.observe(state, now=clock.now())
    assert dec.open_sockets and not dec.close_sockets
    w.sockets_opened(7)
    return w


def test_paused_until_sockets_are_open_then_resumes() -> None:
    clock = FakeClock()
    w = InterfaceWatch("wg0")
    assert w.paused is not None and w.due(clock.now())
    dec = w.observe(UP, now=clock.now())
    assert dec.open_sockets and dec.paused == "interface wg0: opening sockets"
    assert w.sockets_opened(7).paused is None
    assert w.paused is None and w.bound_index == 7


def test_checks_at_most_once_per_interval() -> None:
    clock = FakeClock()
    w = started(clock)
    assert not w.due(clock.now())
    clock.advance(0.99)
    assert not w.due(clock.now())
    clock.advance(0.01)
    assert w.due(clock.now())


def test_down_pauses_and_up_resumes_without_rebinding() -> None:
    clock = FakeClock()
    w = started(clock)
    clock.advance(1)
    dec = w.observe(DOWN, now=clock.now())
    assert dec.paused == "interface wg0 is down" and not dec.close_sockets and not dec.open_sockets
    clock.advance(1)
    dec = w.observe(UP, now=clock.now())
    assert dec.paused is None and not dec.close_sockets and not dec.open_sockets


def test_gone_closes_sockets_and_return_reopens_them() -> None:
    clock = FakeClock()
    w = started(clock)
    clock.advance(1)
    dec = w.observe(GONE, now=clock.now())
    assert dec.close_sockets and not dec.open_sockets and dec.paused == "interface wg0 is gone"
    assert w.bound_index is None
    clock.advance(1)
    dec = w.observe(GONE, now=clock.now())
    assert not dec.close_sockets and not dec.open_sockets and dec.paused == "interface wg0 is gone"
    clock.advance(1)
    dec = w.observe(LinkState(9, True), now=clock.now())  # back with a new index
    assert dec.open_sockets and dec.paused is not None
    assert w.sockets_opened(9).paused is None


def test_replaced_between_checks_closes_and_reopens_at_once() -> None:
    clock = FakeClock()
    w = started(clock)
    clock.advance(1)
    dec = w.observe(LinkState(8, True), now=clock.now())
    assert dec.close_sockets and dec.open_sockets and dec.paused is not None


def test_failed_open_stays_paused_and_retries_next_check() -> None:
    clock = FakeClock()
    w = InterfaceWatch("wg0")
    w.observe(UP, now=clock.now())
    dec = w.sockets_failed("Cannot assign requested address")
    assert dec.paused == "interface wg0: cannot listen: Cannot assign requested address"
    clock.advance(1)
    dec = w.observe(UP, now=clock.now())
    assert dec.open_sockets and dec.paused == "interface wg0: cannot listen: Cannot assign requested address"
    assert w.sockets_opened(7).paused is None


def test_down_at_start_opens_sockets_but_stays_paused() -> None:
    clock = FakeClock()
    w = InterfaceWatch("wg0")
    dec = w.observe(DOWN, now=clock.now())
    assert dec.open_sockets and dec.paused == "interface wg0 is down"
    assert w.sockets_opened(7).paused == "interface wg0 is down"
    clock.advance(1)
    assert w.observe(UP, now=clock.now()).paused is None


def test_missing_at_start_opens_nothing() -> None:
    w = InterfaceWatch("wg0")
    dec = w.observe(GONE, now=0.0)
    assert not dec.open_sockets and not dec.close_sockets and dec.paused == "interface wg0 is gone"


@pytest.mark.parametrize("name", ["wg0", "eth0", "a" * 15, "veth-x.1", "tun_vpn"])
def test_valid_interface_names(name: str) -> None:
    assert valid_interface_name(name)


@pytest.mark.parametrize("name", ["", "a" * 16, "wg/0", "wg:0", "wg 0", "wg\x000", ".", "..", "wg\n"])
def test_invalid_interface_names(name: str) -> None:
    assert not valid_interface_name(name)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_interface(name)


def test_config_interface_parsed_and_validated() -> None:
    assert parse_config('[client]\ninterface = "wg0"\n', "c.toml", base_dir="/").interface == "wg0"
    assert parse_config('[client]\ninterface = ""\n', "c.toml", base_dir="/").interface is None
    assert parse_config("", "c.toml", base_dir="/").interface is None
    with pytest.raises(ConfigError, match="client.interface"):
        parse_config('[client]\ninterface = "wg/0"\n', "c.toml", base_dir="/")


def test_cli_bind_must_be_an_ip_address() -> None:
    assert parse_bind(" 127.0.0.2 ") == "127.0.0.2"
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bind("localhost")


@pytest.mark.parametrize(
    ("bind", "ip", "family"),
    [("0.0.0.0", None, None), ("::", None, None), ("127.0.0.2", "127.0.0.2", socket.AF_INET),
     ("::ffff:127.0.0.2", "127.0.0.2", socket.AF_INET), ("fd00::1", "fd00::1", socket.AF_INET6)],
)
def test_source_from_bind(bind: str, ip: str | None, family: int | None) -> None:
    src = Source.from_bind(bind, "wg0")
    assert (src.ip, src.family, src.interface) == (ip, family, "wg0")


def test_source_skips_addresses_of_the_other_family() -> None:
    v4, v6, anyaddr = Source.from_bind("10.0.0.2"), Source.from_bind("fd00::1"), Source.from_bind("0.0.0.0")
    assert v4.reaches("198.18.0.1") and not v4.reaches("2001:db8::1") and v4.reaches("::ffff:198.18.0.1")
    assert v6.reaches("2001:db8::1") and not v6.reaches("198.18.0.1")
    assert anyaddr.reaches("198.18.0.1") and anyaddr.reaches("2001:db8::1")
