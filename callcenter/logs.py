"""Structured logging: one line per event, keyed by case number and call/message id."""

from __future__ import annotations

import logging
import re
import sys

import structlog

from callcenter.settings import LoggingSettings
from sms.privacy import mask_number

_PHONE_KEYS = {"phone", "reporter", "caller", "recipient", "sender", "callerid", "msisdn", "to", "from_number"}
_LONG_DIGITS = re.compile(r"(?<!\d)(\+?\d{3})\d{4,}(\d{4})(?!\d)")


def _mask_phones(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
    """Belt and braces: mask known phone fields, even if a caller forgot to."""
    for key in _PHONE_KEYS & event.keys():
        value = event[key]
        if isinstance(value, str) and "****" not in value:
            event[key] = mask_number(value)
    return event


def configure_logging(settings: LoggingSettings) -> None:
    level = getattr(logging, settings.level)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if settings.privacy:
        processors.append(_mask_phones)
    processors.append(structlog.processors.format_exc_info)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(ensure_ascii=False) if settings.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    # smpplib logs whole PDUs (message text included) at DEBUG.
    logging.getLogger("smpplib").setLevel(max(level, logging.INFO))
