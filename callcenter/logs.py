"""Structured logging: one line per event, keyed by case number and call/message id."""

from __future__ import annotations

import logging
import sys

import structlog

from callcenter.settings import LoggingSettings
from callcenter.privacy import PHONE_FIELDS, mask_number, mask_numbers_in_text


def _mask_phones(_logger: object, _name: str, event: dict[str, object]) -> dict[str, object]:
    """Belt and braces: mask phone fields even if a caller forgot to, and numbers inside any
    other text (an error message quoting a caller ID, a note) in every spelling."""
    for key, value in event.items():
        if not isinstance(value, str):
            continue
        if key in PHONE_FIELDS:
            if "****" not in value and value != "-":
                event[key] = mask_number(value)
        else:
            event[key] = mask_numbers_in_text(value)
    return event


class _MaskingFilter(logging.Filter):
    """The same masking for libraries that log through the standard library (smpplib, Twisted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_numbers_in_text(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def configure_logging(settings: LoggingSettings) -> None:
    level = getattr(logging, settings.level)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    processors.append(structlog.processors.format_exc_info)
    if settings.privacy:  # after the traceback is text, so numbers in it are masked too
        processors.append(_mask_phones)
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
    if settings.privacy:
        for handler in logging.getLogger().handlers:
            if not any(isinstance(f, _MaskingFilter) for f in handler.filters):
                handler.addFilter(_MaskingFilter())
    # smpplib logs whole PDUs (message text included) at DEBUG.
    logging.getLogger("smpplib").setLevel(max(level, logging.INFO))
