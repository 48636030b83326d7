"""structlog set-up: JSON lines on stderr, one per event, with ``query_id`` bound by callers.

Nothing biometric is ever passed to a logger: handlers log ids, outcomes and digests.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(
    level: str = "INFO", json: bool = True, keep_loggers: bool = True, **bound: object
) -> None:
    """``keep_loggers``: each module's logger resolved once, on its first use, for a
    worker's life. A command that runs once gains nothing from it, and a logger kept holds
    the stream of its first use for good: an in-process run (a test's CliRunner) would leave
    it writing into a closed one, past the reach of ``structlog.testing.capture_logs``."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # we log our own view of failures
    renderer = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=keep_loggers,
    )
    structlog.contextvars.bind_contextvars(**bound)
