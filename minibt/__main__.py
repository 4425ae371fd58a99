"""The ``minibt`` program: ``python -m minibt`` and the ``minibt`` command (setup.py) both run :func:`run`.

:func:`defer_modules` first, for two standard modules that the program imports but a download or a seed
never uses (issue 15: peak RSS):

- ``inspect``, with ``ast`` and ``dis``: ``dataclasses`` imports it only to write a docstring for a
  dataclass that has none (every minibt dataclass has one): 0.65 MiB;
- ``traceback``, with ``linecache``, ``tokenize`` and ``textwrap``: ``logging`` imports it to format an
  exception, which only a fault does: 0.3 MiB (measured 2026-12-06).

Each stands in until one of its names is used, then the real module loads.

:func:`untranslated_argparse` next: ``argparse`` passes each of its own messages ("positional arguments",
"show this help message and exit", ...) through ``gettext``, which imports ``locale`` and looks for
translation files on disk at every call.  CPython ships no translations for them, so the program gives
argparse its messages as written: 0.3 MiB less RSS (measured 2026-12-06), no such file lookups.

Only the program does these (:func:`prepare`); importing minibt as a library leaves the host program's
modules alone.
"""

from __future__ import annotations

import sys
import types

DEFERRED = ("inspect", "traceback")


class _Deferred(types.ModuleType):
    """Stands in for a module of :data:`DEFERRED` until one of its names is used, then imports it and forwards to it.

    Not ``importlib.util.LazyLoader``: the ``import`` statement reads a module's ``__spec__``, which makes
    that kind of module load at once (Python 3.11).
    """

    def __getattr__(self, name: str) -> object:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = _load(self.__name__)
        self.__dict__.update(real.__dict__)
        return getattr(real, name)


def _load(name: str) -> types.ModuleType:
    """The real module (static imports, so test_layering sees them)."""
    if name == "inspect":
        import inspect

        return inspect
    import traceback

    return traceback


def defer_modules() -> None:
    """Make the modules of :data:`DEFERRED` load on first use (those not loaded yet)."""
    for name in DEFERRED:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)


def _same(message: str) -> str:
    return message


def _plural(singular: str, plural: str, n: int) -> str:
    return singular if n == 1 else plural


def untranslated_argparse() -> None:
    """argparse's messages as written (``gettext``'s result where no translation is installed)."""
    import argparse

    setattr(argparse, "_", _same)  # noqa: B010 - argparse's module-level names, not in its type stubs
    setattr(argparse, "ngettext", _plural)  # noqa: B010


def prepare() -> None:
    """What the program does before it imports the rest of minibt."""
    defer_modules()
    untranslated_argparse()


def run(argv: list[str] | None = None) -> int:
    prepare()
    from minibt.cli import main

    return main(argv)


if __name__ == "__main__":
    sys.exit(run())
