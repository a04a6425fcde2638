"""Shared runner for the atheris fuzz harnesses in this folder.

Each ``fuzz_*.py`` module defines ``target(data: bytes) -> None`` that feeds untrusted bytes
to one parser.  The rule every parser is held to: parse, or raise a
:class:`protocol.errors.RemoteError` -- nothing else.  :func:`guarded` enforces the rule;
anything else escapes and atheris reports it as a crash.

``python tests/fuzz/fuzz_X.py -atheris_runs=N`` runs one harness (``make fuzz`` runs all of
them for a while); ``tests/fuzz/test_fuzz_harnesses.py`` runs each briefly in the suite.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import types
from collections.abc import Callable

from protocol.errors import RemoteError

Target = Callable[[bytes], None]


def guarded(parse: Callable[[bytes], object], data: bytes) -> None:
    """Call ``parse(data)``; a RemoteError is an accepted outcome, nothing else is."""
    with contextlib.suppress(RemoteError):
        parse(data)


#: The packages whose code is instrumented for coverage feedback.
OWN_PACKAGES = ("protocol", "hub", "nodes", "tests")


def run(target: Target) -> None:
    """Run ``target`` under atheris with the command line's libFuzzer options.

    Only the project's own functions are instrumented.  ``atheris.instrument_all()`` also
    rewrites every standard-library function already loaded (3,000 and more, 25-50 s per
    start on Python 3.11), which makes short runs in the test suite far too slow and adds
    no useful feedback: cbor2 and the cryptographic primitives are native code anyway.
    """
    import atheris

    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and _is_own(obj):
            try:
                atheris.instrument_func(obj)
            except Exception as exc:  # as instrument_all does: report, fuzz on
                sys.stderr.write(f"WARNING: not instrumented: {obj.__qualname__}: {exc}\n")
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


def _is_own(func: types.FunctionType) -> bool:
    module = getattr(func, "__module__", None)
    if not isinstance(module, str):
        return False
    return module == "__main__" or module.split(".")[0] in OWN_PACKAGES
