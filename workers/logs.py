"""Log records as JSON lines (``DEEPSCAN_LOG_FORMAT=json``), carrying the scan and object of the task.

A task's scan id and object URI are put in context when it starts (Celery's ``task_prerun``) and taken out
when it ends, so every record logged while it runs, by our code or a library's, says which object it is
about. ``configure`` installs the formatter on the CLI's handlers; a worker installs it on Celery's
through ``celery_app`` (``after_setup_logger``).
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import datetime, timezone
from typing import Any

from celery import signals

_scan_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("deepscan_scan_id", default=None)
_object_uri: contextvars.ContextVar[str | None] = contextvars.ContextVar("deepscan_object", default=None)
_task: contextvars.ContextVar[str | None] = contextvars.ContextVar("deepscan_task", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, and ``scan_id``,
    ``object`` and ``task`` while a task runs; ``exc_info`` as ``exception`` text."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, var in (("scan_id", _scan_id), ("object", _object_uri), ("task", _task)):
            value = var.get()
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(handlers: list[logging.Handler], log_format: str) -> None:
    """Give ``handlers`` the formatter of ``log_format`` (``text`` or ``json``)."""
    for handler in handlers:
        handler.setFormatter(formatter(log_format))


_tokens: dict[str, list[contextvars.Token[Any]]] = {}  # task id -> what to restore when it ends


@signals.task_prerun.connect
def _enter_task(task_id: str, task: Any, kwargs: dict[str, Any] | None = None, **_: Any) -> None:
    kwargs = kwargs or {}
    ref = kwargs.get("ref")
    uri = kwargs.get("uri")
    if isinstance(ref, dict):
        uri = f"{ref['uri']}#{ref['member']}" if ref.get("member") is not None else ref.get("uri")
    # eager tasks nest (a scan in process runs a video's chord inside analyze_object): restore, not clear
    _tokens[task_id] = [_scan_id.set(kwargs.get("scan_id")), _object_uri.set(uri), _task.set(task.name)]


@signals.task_postrun.connect
def _leave_task(task_id: str, **_: Any) -> None:
    for token in reversed(_tokens.pop(task_id, [])):
        token.var.reset(token)
