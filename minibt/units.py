"""Sizes, rates, durations and times of day as people write them: ``96MiB``, ``500KiB``, ``1h30m``,
``22:00``.  Used by the config file (configfile.py) and by the command line (cli.py).

A module of its own so that ``minibt download --up-limit 500KiB`` does not load the config checker
with it (with ``fractions`` and ``decimal``: 0.8 MiB of RSS).  Decimal fractions are exact: a
number is kept as an integer over a power of ten, never a float, until the result.  Every parser
is linear in its input, which is capped at MAX_VALUE_CHARS.  Pure: no I/O.
"""

from __future__ import annotations

import math
import re

_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DIGITS = frozenset("0123456789")
MAX_VALUE_CHARS = 64  # convention: "1d 2h 30m 15s" needs 13; a longer size/rate/duration is refused
MAX_SIZE_BYTES = 1 << 50  # convention: 1 PiB, the metainfo.MAX_LENGTH cap on a whole torrent
MAX_RATE_BPS = 1 << 40  # convention: 1 TiB/s, far beyond any link; larger means a typo
MAX_DURATION_S = 100 * 365 * 86400  # convention: 100 years; anything longer means "no limit" (use 0)
_HHMM_RE = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


def _decimal(digits: str) -> tuple[int, int]:
    """``"1.25"`` -> (125, 100), ``"1."`` -> (1, 1), ``".5"`` -> (5, 10): the exact value as a fraction."""
    whole, _, frac = digits.partition(".")
    return int(whole + frac or "0"), 10 ** len(frac)


def _number_and_unit(text: str, what: str) -> tuple[tuple[int, int], str]:
    """``"1.5 MiB"`` -> ((15, 10), "mib"); linear time, no regular expression."""
    t = text.strip().lower()
    if len(t) > MAX_VALUE_CHARS:
        raise ValueError(f"bad {what}: {len(t)} characters (limit {MAX_VALUE_CHARS})")
    i = _skip_number(t, 0)
    if i == 0 or t[:i] == ".":
        raise ValueError(f"bad {what} {text[:40]!r}")
    unit = t[i:].lstrip(" \t")
    return _decimal(t[:i]), unit


def _skip_number(t: str, i: int) -> int:
    """End of the ``123``, ``1.5``, ``1.`` or ``.5`` that starts at ``t[i]`` (i itself if none)."""
    n = len(t)
    while i < n and t[i] in _DIGITS:
        i += 1
    if i < n and t[i] == ".":
        i += 1
        while i < n and t[i] in _DIGITS:
            i += 1
    return i


def _bytes_value(text: str | int, what: str, limit: int, *, per_second: bool) -> int:
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise ValueError(f"bad {what} {text!r}")
    if isinstance(text, int):
        n = text
    else:
        (num, den), unit = _number_and_unit(text, what)
        if per_second and unit.endswith("/s"):
            unit = unit[:-2].rstrip(" \t")
        mult = _SIZE_UNITS.get(unit)
        if mult is None:
            raise ValueError(f"bad {what} {text[:40]!r}: unknown unit {unit[:10]!r} (B, KiB, MiB, GiB, kB, MB, GB)")
        n = num * mult // den  # whole bytes, the fraction of a byte dropped
    if n < 0:
        raise ValueError(f"bad {what}: negative")
    if n > limit:
        raise ValueError(f"{what} larger than the limit of {limit} bytes{'/s' if per_second else ''}")
    return n


def parse_size(text: str | int) -> int:
    """Bytes: 96MiB, 512k, 1G, 1000 (at most MAX_SIZE_BYTES); ValueError otherwise."""
    return _bytes_value(text, "size", MAX_SIZE_BYTES, per_second=False)


def parse_rate(text: str | int) -> float | None:
    """Bytes/s: 500KiB, 2MiB, 300kB/s, 1000 (at most MAX_RATE_BPS); 0 = unlimited (None)."""
    n = _bytes_value(text, "rate", MAX_RATE_BPS, per_second=True)
    return float(n) if n > 0 else None


def parse_duration(text: str | int | float) -> float:
    """Seconds: 90, "90s", "15m", "2h", "1d", "1h30m" (at most MAX_DURATION_S).

    A hand-written tokenizer: linear in the length of the text, which is itself capped.
    """
    if isinstance(text, bool) or not isinstance(text, int | float | str):
        raise ValueError(f"bad duration {text!r}")
    if isinstance(text, int | float):
        if isinstance(text, float) and not math.isfinite(text):
            raise ValueError("must be a finite number >= 0")
        if text < 0:
            raise ValueError("must be a finite number >= 0")
        if text > MAX_DURATION_S:
            raise ValueError(f"longer than the limit of {MAX_DURATION_S} s (100 years)")
        return float(text)
    t = text.strip().lower()
    if not t:
        raise ValueError(f"bad duration {text!r}")
    if len(t) > MAX_VALUE_CHARS:
        raise ValueError(f"bad duration: {len(t)} characters (limit {MAX_VALUE_CHARS})")
    total_num, total_den = 0, 1  # the exact sum so far: total_num / total_den seconds
    i, n = 0, len(t)
    while i < n:
        start = i
        if t[i] not in _DIGITS:
            raise ValueError(f"bad duration {text[:40]!r} (examples: 90, 90s, 15m, 2h, 1d, 1h30m)")
        i = _skip_number(t, i)
        num, den = _decimal(t[start:i])
        while i < n and t[i] in " \t":
            i += 1
        unit_start = i
        while i < n and "a" <= t[i] <= "z":
            i += 1
        unit = t[unit_start:i]
        mult = _DURATION_UNITS.get(unit)
        if mult is None:
            raise ValueError(f"bad duration {text[:40]!r}: unknown unit {unit[:10]!r} (s, m, h, d)")
        if den > total_den:  # both are powers of ten: the larger is a multiple of the smaller
            total_num *= den // total_den
            total_den = den
        total_num += num * mult * (total_den // den)
        while i < n and t[i] in " \t":
            i += 1
    if total_num > MAX_DURATION_S * total_den:
        raise ValueError(f"longer than the limit of {MAX_DURATION_S} s (100 years)")
    return total_num / total_den


def parse_hhmm(text: str) -> int:
    """"HH:MM" -> minutes after midnight (24:00 allowed as an end)."""
    m = _HHMM_RE.match(text.strip())
    if m is None or (int(m.group(1)) == 24 and m.group(2) != "00"):
        raise ValueError(f"bad time {text!r}, expected HH:MM")
    return int(m.group(1)) * 60 + int(m.group(2))
