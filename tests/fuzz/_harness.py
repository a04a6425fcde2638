"""Shared runner for the atheris fuzz harnesses in this folder.

Each ``fuzz_*.py`` module defines ``target(data: bytes) -> None`` that feeds untrusted bytes
to one parser.  The rule every parser is held to: parse, or raise a
:class:`protocol.errors.RemoteError` -- nothing else.  :func:`guarded` enforces the rule;
anything else escapes and atheris reports it as a crash.

``python tests/fuzz/fuzz_X.py -atheris_runs=N`` runs one harness (``make fuzz`` runs all of
them for a while); ``tests/fuzz/test_fuzz_harnesses.py`` runs each briefly in the suite.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from protocol.errors import RemoteError

Target = Callable[[bytes], None]


def guarded(parse: Callable[[bytes], object], data: bytes) -> None:
    """Call ``parse(data)``; a RemoteError is an accepted outcome, nothing else is."""
    try:
        parse(data)
    except RemoteError:
        pass


def run(target: Target) -> None:
    """Run ``target`` under atheris with the command line's libFuzzer options."""
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()
