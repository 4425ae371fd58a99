"""The fuzzing kit: a target registry, input counters, the error/time contract and mutators.

A *target* is one parser fed from outside.  It has a Hypothesis strategy that builds mostly-valid,
structure-aware inputs (valid messages with a field perturbed, truncations, concatenations, huge
length prefixes, deep nesting) and a ``run(input)`` that feeds the input to the module and checks
the contract (STYLE.md sections 6 and 9): only the module's own error may escape, and no single
call may take longer than ``TIME_LIMIT_S``.  Anything else raises :class:`Finding`.

Inputs are plain literals (bytes, str, int, float, bool, None, tuples and lists of them), so a
failing input can be stored in the regression corpus (``tests/vectors/regress/<target>/``) as a
``.lit`` file (a Python literal) or, for byte-stream targets, as a ``.hex`` file.

Adding a target (KRPC, MSE, holepunch, ...) is one call to :func:`register` with a strategy and a
run function; the short, slow and regression tests pick it up from the registry.
"""

from __future__ import annotations

import ast
import hashlib
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

TIME_LIMIT_S = 1.0  # contract: no input of a few KiB takes over 1 s in one call (CPU time of this thread,
# so other processes on a loaded CI machine cannot fail it; a parser that blocks would not show, but none does I/O)
# CI budget: examples per target.  All targets together stay well under a minute on 2 cores.
EXAMPLES = int(os.environ.get("MINIBT_FUZZ_EXAMPLES", "500"))
# Slow run: seconds per target (fresh Hypothesis runs, new seeds, until the time is up).
SECONDS = float(os.environ.get("MINIBT_FUZZ_SECONDS", "120"))
REGRESS_DIR = Path(__file__).resolve().parent.parent / "vectors" / "regress"
# Feed plans for byte streams: () = whole, (-1,) = byte by byte, else split points.
WHOLE: tuple[int, ...] = ()
BYTEWISE: tuple[int, ...] = (-1,)
REPLAY_PLANS: tuple[tuple[int, ...], ...] = (WHOLE, BYTEWISE, (1, 5, 13, 20, 48, 68, 69, 100, 300))


class Finding(AssertionError):
    """The contract was broken: a foreign exception escaped, or a call was too slow."""

    def __init__(self, target: str, stage: str, detail: str, cause: BaseException | None = None) -> None:
        self.target = target
        self.stage = stage
        self.cause = cause
        super().__init__(f"fuzz {target} [{stage}]: {detail}")


@dataclass
class Stats:
    inputs: int = 0
    failures: int = 0
    seconds: float = 0.0


@dataclass
class Target:
    """One parser under fuzz.

    ``run`` raises Finding on a broken contract.  ``from_bytes(data, plan)`` turns corpus bytes
    into an input (stream targets honour the feed plan); ``to_bytes`` is its inverse where one
    exists.
    """

    name: str
    strategy: st.SearchStrategy[Any]
    run: Callable[[Any], None]
    from_bytes: Callable[[bytes, tuple[int, ...]], Any] | None = None
    to_bytes: Callable[[Any], bytes | None] | None = None
    stats: Stats = field(default_factory=Stats)
    last_failure: tuple[Any, BaseException] | None = None  # the latest failing input (shrunk last)


REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    if target.name in REGISTRY:
        raise ValueError(f"fuzz target {target.name!r} registered twice")
    REGISTRY[target.name] = target
    return target


# -------------------------------------------------------------------------- the contract


def call(
    target: str,
    stage: str,
    allowed: type[BaseException] | tuple[type[BaseException], ...],
    fn: Callable[..., Any],
    *args: Any,
    **kwargs: Any,
) -> tuple[Any, BaseException | None]:
    """Run one call into the module under fuzz; ``(result, None)`` or ``(None, allowed error)``.

    Any other exception, or a call taking longer than TIME_LIMIT_S, raises Finding.
    """
    t0 = time.thread_time()
    try:
        result = fn(*args, **kwargs)
        err: BaseException | None = None
    except allowed as e:
        result, err = None, e
    except Exception as e:
        raise Finding(target, stage, f"{type(e).__name__}: {e}", e) from e
    elapsed = time.thread_time() - t0
    if elapsed > TIME_LIMIT_S:
        raise Finding(target, stage, f"one call took {elapsed:.2f} s (limit {TIME_LIMIT_S} s)")
    return result, err


def check(target: str, stage: str, ok: bool, detail: str) -> None:
    """An invariant of the target's own (not an exception contract), e.g. split invariance."""
    if not ok:
        raise Finding(target, stage, detail)


def run_input(target: Target, inp: Any) -> None:
    """Run one input, counting it and remembering it if it fails."""
    stats = target.stats
    stats.inputs += 1
    t0 = time.perf_counter()
    try:
        target.run(inp)
    except Exception as e:
        stats.failures += 1
        target.last_failure = (inp, e)
        raise
    finally:
        stats.seconds += time.perf_counter() - t0


def fuzz(target: Target, *, max_examples: int, rng_seed: int | None = None, use_database: bool = True) -> None:
    """One Hypothesis run of ``max_examples`` inputs against ``target``."""

    @settings(
        max_examples=max_examples,
        deadline=None,
        database=settings.default.database if use_database else None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @given(target.strategy)
    def prop(inp: Any) -> None:
        run_input(target, inp)

    test = seed(rng_seed)(prop) if rng_seed is not None else prop
    test()


def summary_lines() -> list[str]:
    lines = []
    for name in sorted(REGISTRY):
        s = REGISTRY[name].stats
        if s.inputs:
            lines.append(f"fuzz {name}: {s.inputs} inputs, {s.failures} failures, {s.seconds:.1f} s")
    return lines


# -------------------------------------------------------------------------- corpus


@dataclass(frozen=True)
class Vector:
    target: str
    path: Path
    comment: str
    data: bytes | None  # .hex vectors
    literal: Any  # .lit vectors


def read_vector(target: str, path: Path) -> Vector:
    """A ``.hex`` (hex digits, whitespace ignored) or ``.lit`` (Python literal) corpus file.

    Leading ``#`` lines are comments (the first says where the input came from).
    """
    text = path.read_text(encoding="utf-8")
    comments, body = [], []
    for line in text.splitlines():
        if not body and line.startswith("#"):
            comments.append(line[1:].strip())
        else:
            body.append(line)
    if not comments:
        raise ValueError(f"{path}: the first line must be a '#' comment saying where the input came from")
    rest = "\n".join(body)
    if path.suffix == ".hex":
        return Vector(target, path, comments[0], bytes.fromhex("".join(rest.split())), None)
    if path.suffix == ".lit":
        return Vector(target, path, comments[0], None, ast.literal_eval(rest.strip()))
    raise ValueError(f"{path}: corpus files are .hex or .lit")


def corpus() -> list[Vector]:
    out = []
    if REGRESS_DIR.is_dir():
        for d in sorted(p for p in REGRESS_DIR.iterdir() if p.is_dir()):
            for f in sorted(d.iterdir()):
                if f.suffix in (".hex", ".lit"):
                    out.append(read_vector(d.name, f))
    return out


def replay(target: Target, vec: Vector) -> None:
    """Run a corpus vector: .hex through every replay feed plan, .lit as stored."""
    if vec.data is not None:
        if target.from_bytes is None:
            raise ValueError(f"{vec.path}: target {target.name} takes no .hex vectors")
        done: list[Any] = []
        for plan in REPLAY_PLANS:
            inp = target.from_bytes(vec.data, plan)
            if inp not in done:  # targets that take no feed plan run once
                done.append(inp)
                run_input(target, inp)
    else:
        run_input(target, vec.literal)


def save_finding(target: Target, inp: Any, finding: BaseException, directory: Path = REGRESS_DIR) -> Path:
    """Write a failing input to the corpus (.hex if the target can serialise it, else .lit)."""
    raw = target.to_bytes(inp) if target.to_bytes is not None else None
    body = raw.hex() if raw is not None else repr(inp)
    suffix = ".hex" if raw is not None else ".lit"
    digest = hashlib.sha1(body.encode()).hexdigest()[:12]
    d = directory / target.name
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"found-{digest}{suffix}"
    first = str(finding).splitlines()[0][:200] if str(finding) else type(finding).__name__
    path.write_text(f"# found by the slow fuzz run ({time.strftime('%Y-%m-%d')}): {first}\n{body}\n", encoding="utf-8")
    return path


# -------------------------------------------------------------------------- feeding and mutation


U32 = struct.Struct(">I")


def frame(mid: int, payload: bytes = b"") -> bytes:
    """A BEP 3 peer-wire message: its 4-byte length, its id, its payload."""
    return U32.pack(1 + len(payload)) + bytes((mid,)) + payload


def ext_frame(ext_id: int, payload: bytes) -> bytes:
    """A BEP 10 extended message (id 20) for extension ``ext_id`` (0: the extension handshake)."""
    return frame(20, bytes((ext_id,)) + payload)


def split(data: bytes, plan: Sequence[int]) -> list[bytes]:
    """Cut ``data`` for feeding: whole (plan ()), byte by byte ((-1,)) or at the plan's points."""
    if not plan:
        return [data] if data else []
    if plan[0] == -1:
        return [data[i : i + 1] for i in range(len(data))]
    cuts = sorted({p % (len(data) + 1) for p in plan} | {0, len(data)})
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


feed_plans: st.SearchStrategy[tuple[int, ...]] = st.one_of(
    st.just(WHOLE),
    st.just(BYTEWISE),
    st.lists(st.integers(0, 1 << 16), min_size=1, max_size=10).map(tuple),
)

# Values that break length prefixes and counters: around 2**8/16/31/32 and small ones.
EDGE_U32 = (0, 1, 2, 3, 4, 5, 9, 13, 0x7F, 0xFF, 0x100, 0x3FFF, 0x4000, 0x4001, 0x4009, 0xFFFF, 0x10000,
            0x100000, 0x100002, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF)
EDGE_INTS = (0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64, -(2**63), 10**40, -(10**40))


@st.composite
def mutated(draw: st.DrawFn, base: bytes) -> bytes:
    """``base`` itself (a quarter of the time) or with one to four byte-level mutations."""
    data = bytearray(base)
    for _ in range(draw(st.sampled_from((0, 0, 1, 1, 1, 2, 3, 4)))):
        kind = draw(st.integers(0, 9))
        pos = draw(st.integers(0, len(data)))
        if kind == 0:  # truncate
            del data[pos:]
        elif kind == 1 and data:  # flip bits in one byte
            i = min(pos, len(data) - 1)
            data[i] ^= draw(st.integers(1, 255))
        elif kind == 2:  # insert junk
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == 3:  # delete a range
            del data[pos : pos + draw(st.integers(1, 16))]
        elif kind == 4:  # duplicate a range
            n = draw(st.integers(1, 64))
            data[pos:pos] = data[pos : pos + n]
        elif kind == 5:  # a u32 near the edges (length prefixes, indexes)
            v = draw(st.sampled_from(EDGE_U32))
            data[pos : pos + 4] = v.to_bytes(4, "big")
        elif kind == 6:  # a u16 edge (ports, seq_nr, connection ids)
            v = draw(st.sampled_from((0, 1, 0x7FFF, 0x8000, 0xFFFF)))
            data[pos : pos + 2] = v.to_bytes(2, "big")
        elif kind == 7:  # append garbage
            data += draw(st.binary(min_size=1, max_size=64))
        elif kind == 8 and data:  # set one byte to a structural value
            i = min(pos, len(data) - 1)
            data[i] = draw(st.sampled_from(b"0123456789:deil\x00\xff\x14"))
        else:  # splice a decimal number (bencode lengths/ints, text numbers)
            data[pos:pos] = str(draw(st.sampled_from(EDGE_INTS))).encode()
    return bytes(data)


def mutated_from(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return base.flatmap(mutated)


# Bencode values for building payloads: ints, strings, and nested lists/dicts.
bvalues: st.SearchStrategy[Any] = st.recursive(
    st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(EDGE_INTS), st.binary(max_size=24)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.binary(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


def deep(kind: bytes, depth: int, leaf: bytes = b"i0e") -> bytes:
    """``depth`` nested lists or dicts around ``leaf`` (dicts get the key ``1:k``)."""
    if kind == b"l":
        return b"l" * depth + leaf + b"e" * depth
    return b"d1:k" * depth + leaf + b"e" * depth
