from __future__ import annotations

import hashlib

import pytest

from minibt.reputation import Banned, BlockRecord, Reputation, ReputationChanged

KEY = b"\x11" * 20


def d(data: bytes) -> bytes:
    return hashlib.sha1(data).digest()


def test_start_score_and_verified_piece_adds_one_without_cap() -> None:
    r = Reputation()
    assert r.score("10.0.0.1") == 100
    for i in range(150):
        r.piece_passed(KEY, i, ["10.0.0.1"])
    assert r.score("10.0.0.1") == 250


def test_failed_piece_from_one_ip_costs_twenty_and_third_failure_bans() -> None:
    r = Reputation()
    ip = "10.0.0.2"
    evs = r.piece_failed(KEY, 1, [BlockRecord(0, ip, d(b"x")), BlockRecord(1, ip, d(b"y"))])
    assert evs == [ReputationChanged(ip, 100, 80, "sent corrupt data (piece 1)")]
    r.piece_failed(KEY, 2, [BlockRecord(0, ip, d(b"x"))])
    assert r.score(ip) == 60 and not r.is_banned(ip)
    evs = r.piece_failed(KEY, 3, [BlockRecord(0, ip, d(b"x"))])
    assert r.score(ip) == 40
    assert isinstance(evs[-1], Banned) and evs[-1].ip == ip
    assert r.is_banned(ip) and "reputation 40" in r.banned()[ip]


def test_ban_exactly_at_the_threshold() -> None:
    r = Reputation()
    assert not any(isinstance(e, Banned) for e in r.adjust("a", -49, "abuse"))
    assert r.score("a") == 51 and not r.is_banned("a")
    evs = r.adjust("a", -1, "abuse")
    assert r.score("a") == 50 and r.is_banned("a")
    assert [type(e) for e in evs] == [ReputationChanged, Banned]
    assert r.adjust("a", -10, "again")[-1] == ReputationChanged("a", 50, 40, "again")  # banned once only


def test_shared_piece_blames_only_the_liar_once_the_piece_verifies() -> None:
    r = Reputation()
    good = [b"A" * 16384, b"B" * 16384, b"C" * 100]
    # Attempt 1: honest sent blocks 0 and 2, liar sent a corrupt block 1.
    attempt = [BlockRecord(0, "honest", d(good[0])), BlockRecord(1, "liar", d(b"evil")),
               BlockRecord(2, "honest", d(good[2]))]
    assert r.piece_failed(KEY, 7, attempt) == []  # deferred: two senders
    assert r.has_ledger(KEY, 7)
    assert r.score("honest") == 100 and r.score("liar") == 100
    # Attempt 2 succeeds with all blocks from the honest peer.
    r.piece_passed(KEY, 7, ["honest"], [d(g) for g in good])
    assert not r.has_ledger(KEY, 7)
    assert r.score("liar") == 80
    assert r.score("honest") == 101
    assert r.counters["honest_spared"] == 1


def test_each_failed_attempt_costs_the_liar() -> None:
    r = Reputation()
    good = [b"A" * 16384, b"B" * 16384]
    for _ in range(3):
        r.piece_failed(KEY, 3, [BlockRecord(0, "h", d(good[0])), BlockRecord(1, "l", d(b"bad"))])
    evs = r.piece_passed(KEY, 3, ["h"], [d(g) for g in good])
    assert r.score("l") == 40 and r.is_banned("l")
    assert any(isinstance(e, Banned) and e.ip == "l" for e in evs)
    assert r.score("h") == 101


def test_ledger_is_bounded() -> None:
    r = Reputation(max_ledger_pieces=4)
    for p in range(10):
        r.piece_failed(KEY, p, [BlockRecord(0, "a", b"1" * 20), BlockRecord(1, "b", b"2" * 20)])
    assert sum(r.has_ledger(KEY, p) for p in range(10)) == 4
    assert r.has_ledger(KEY, 9) and not r.has_ledger(KEY, 0)


def test_score_table_is_bounded_but_bans_stay() -> None:
    r = Reputation(max_ips=3)
    r.adjust("banned", -60, "x")
    for i in range(10):
        r.adjust(f"10.0.0.{i}", 1, "ok")
    assert r.is_banned("banned")
    assert r.score("10.0.0.0") == 100  # forgotten: back to the start value


def test_loopback_addresses_are_distinct_hosts() -> None:
    # PROTOCOL.md 7.11: 127.0.0.2 is not 127.0.0.1.
    r = Reputation()
    r.adjust("127.0.0.2", -60, "liar")
    assert r.is_banned("127.0.0.2") and not r.is_banned("127.0.0.1")


def test_without_a_listener_a_verified_piece_brings_no_change_events_but_a_settled_ledger_still_bans() -> None:
    r = Reputation()
    assert r.piece_passed(KEY, 1, ["a"]) == [ReputationChanged("a", 100, 101, "piece 1 verified")]
    assert r.piece_passed(KEY, 2, ["a", "b"], changed=False) == []  # the +1s are still counted
    assert (r.score("a"), r.score("b")) == (102, 101)
    good = [b"A" * 16384, b"B" * 16384]
    for _ in range(3):
        r.piece_failed(KEY, 3, [BlockRecord(0, "h", d(good[0])), BlockRecord(1, "l", d(b"bad"))])
    evs = r.piece_passed(KEY, 3, ["h"], [d(g) for g in good], changed=False)
    assert [type(e) for e in evs] == [ReputationChanged, ReputationChanged, ReputationChanged, Banned]
    assert all(e.ip == "l" for e in evs) and r.is_banned("l") and r.score("h") == 101


def test_ban_table_is_bounded_and_lifts_the_oldest_ban_first() -> None:
    r = Reputation(max_bans=3)
    for i in range(3):
        r.adjust(f"2001:db8::{i}", -50, "abuse")
    assert list(r.banned()) == ["2001:db8::0", "2001:db8::1", "2001:db8::2"]
    assert r.counters["bans_lifted"] == 0
    evs = r.ban("2001:db8::3", "by hand")
    assert evs == [Banned("2001:db8::3", "by hand")]
    assert list(r.banned()) == ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
    assert not r.is_banned("2001:db8::0") and r.counters["bans_lifted"] == 1
    assert r.score("2001:db8::0") == 100  # lifted: it starts again, and must misbehave again to be banned
    assert r.ban("2001:db8::3", "again") == [] and len(r.banned()) == 3  # banning a banned IP lifts nothing
    # Many addresses, one ban each: the table never holds more than its bound.
    big = Reputation()
    for i in range(5000):
        big.adjust(f"2001:db8::{i:x}", -60, "abuse")
    assert len(big.banned()) == 1024 and big.counters["bans"] == 5000 and big.counters["bans_lifted"] == 5000 - 1024
    assert big.is_banned("2001:db8::1387") and not big.is_banned("2001:db8::0")


def test_ban_table_needs_room_for_one() -> None:
    with pytest.raises(ValueError):
        Reputation(max_bans=0)
