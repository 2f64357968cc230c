"""Structured logs: JSON lines for journald and log shippers, short readable lines on a terminal.

Everything goes through one stdlib handler whose formatter is structlog's ProcessorFormatter, so the
daemon's own structlog events and library loggers (apscheduler, ...) come out in the same shape.
On a terminal a cycle is one short line (record.summary: time, outcome, |m| before and after, the
move); in JSON it carries every figure, and the same short line as `summary`.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from temalign.record.summary import cycle_summary
from temalign.values import jsonable

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("auto", "json", "console")

_HANDLER_NAME = "temalign"


_LEADING_KEYS = ("timestamp", "level", "logger", "event")


def _jsonable_event(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """JSON types only, and the keys a person scans for first."""
    ordered = {key: event_dict[key] for key in _LEADING_KEYS if key in event_dict}
    ordered.update(event_dict)
    return {str(key): jsonable(value, str(key), default=str) for key, value in ordered.items()}


_CONSOLE_KEYS = ("timestamp", "level", "logger", "event", "_record", "_from_structlog")


def _console_cycle(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """On a terminal a cycle is its summary line alone, not the ~1500 characters of its figures."""
    if event_dict.get("event") == "cycle" and "outcome" in event_dict:
        summary = event_dict.get("summary") or cycle_summary(event_dict)
        event_dict = {key: event_dict[key] for key in _CONSOLE_KEYS if key in event_dict}
        event_dict["event"] = f"cycle {summary}"
    return event_dict


def _serialize(obj: object, **kwargs: Any) -> str:
    return json.dumps(obj, allow_nan=False, **kwargs)


def configure_logging(level: str, fmt: str, stream: TextIO | None = None) -> None:
    """Route structlog and stdlib logging to `stream` (default stdout) at `level` in `fmt`.

    fmt "json": one JSON object per line (ISO-8601 UTC timestamp, level, logger, event, fields), what
    journald and a log shipper want; "console": structlog's ConsoleRenderer for a person; "auto":
    console when the stream is a terminal, else json. Calling it again replaces the previous set-up.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    stream = sys.stdout if stream is None else stream
    is_tty = stream.isatty()
    if fmt == "auto":
        fmt = "console" if is_tty else "json"
    numeric_level = getattr(logging, level.upper())

    # JSON: UTC, ISO 8601, for machines; a terminal: the local time a person reads off the wall.
    stamper = (structlog.processors.TimeStamper(fmt="iso", utc=True) if fmt == "json"
               else structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False))
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        stamper,
        structlog.stdlib.ExtraAdder(),
    ]
    renderer: Processor
    final: list[Processor]
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_serialize)
        final = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
            _jsonable_event,
            renderer,
        ]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=is_tty, exception_formatter=structlog.dev.plain_traceback)
        final = [_console_cycle, structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer]

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final))
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)
    logging.captureWarnings(True)
    # apscheduler logs every job run at INFO: a line per cycle beside ours is noise in a years-long journal.
    logging.getLogger("apscheduler").setLevel(max(numeric_level, logging.WARNING))


_CYCLE_LEVELS = {"error": logging.ERROR, "rolled_back": logging.WARNING, "hold": logging.WARNING,
                 "refused_limit": logging.WARNING}


def cycle_line(logger: structlog.stdlib.BoundLogger, **fields: object) -> None:
    """Emit the one canonical line of a cycle: event "cycle" with every figure of it as a field, and
    its `summary` (record.summary), the line a terminal shows instead of the figures.

    Values are made JSON here by the one rule of temalign/values.py (numpy scalars, tuples; NaN as
    "NaN") so the line reads the same in either format. Its level follows `outcome`: error for
    "error", warning for rollbacks, hold and limit refusals, info otherwise, so a filter on the
    level finds the cycles that need a look.
    """
    safe = {key: jsonable(value, key, default=str) for key, value in fields.items()}
    safe.pop("event", None)
    safe["summary"] = cycle_summary(safe)
    level = _CYCLE_LEVELS.get(str(safe.get("outcome")), logging.INFO)
    logger.log(level, "cycle", **safe)
