"""Structured logs: JSON lines with ids, digests and sizes -- never subjects or content.

Handlers bind what they know (``request_id``, ``organ``, ``packet_id`` as UUID text,
digests as hex) through structlog's context variables; the hub never has a subject or a
file name to log, since those travel encrypted.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType
from typing import TYPE_CHECKING


def _structlog_without_rich() -> ModuleType:
    """Import structlog without letting it load rich (and pygments): ~3 MiB per process.

    structlog imports rich, when it is installed, for its console renderer and pretty
    tracebacks; the hub renders JSON and uses neither.  rich stays importable afterwards
    (the hub's CLI tables import it when they need it).
    """
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    rich = sys.modules.get("rich")
    sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" -> ImportError
    try:
        return importlib.import_module("structlog")
    finally:
        if rich is None:
            del sys.modules["rich"]
        else:
            sys.modules["rich"] = rich


if TYPE_CHECKING:
    import structlog
else:
    structlog = _structlog_without_rich()


def configure_logging(level: str = "info") -> None:
    """JSON lines on standard error, for ``serve``."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
