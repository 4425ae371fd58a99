"""The ``minibt`` program: ``python -m minibt`` and the ``minibt`` command (setup.py) both run :func:`run`.

:func:`defer_inspect` first: ``dataclasses`` imports ``inspect``, which imports ``ast`` and ``dis``, and uses
it only to write a docstring for a dataclass that has none (every minibt dataclass has one).  Left lazy, it
is never loaded by a download or a seed: 0.65 MiB less peak RSS (issue 15).  Only the program does this;
importing minibt as a library leaves the host program's modules alone.
"""

from __future__ import annotations

import sys
import types


class _DeferredInspect(types.ModuleType):
    """Stands in for ``inspect`` until one of its names is used, then imports it and forwards to it.

    Not ``importlib.util.LazyLoader``: the ``import`` statement reads a module's ``__spec__``, which makes
    that kind of module load at once (Python 3.11).
    """

    def __getattr__(self, name: str) -> object:
        if sys.modules.get("inspect") is self:
            del sys.modules["inspect"]
        import inspect as real  # now the real one (static, so test_layering sees it)

        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def defer_inspect() -> None:
    """Make ``inspect`` load on first use."""
    if "inspect" not in sys.modules:
        sys.modules["inspect"] = _DeferredInspect("inspect")


def run(argv: list[str] | None = None) -> int:
    defer_inspect()
    from minibt.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
