"""Logging set-up: one format (text or JSON lines), third-party chatter turned down, no
patient data."""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``thread``, the ``extra=`` fields, and ``exception`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """``fmt``: ``text`` (default) or ``json``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python warnings go through logging too, so a JSON log stays one object per line.
    logging.captureWarnings(True)
    # pynetdicom logs PDUs and, at DEBUG, whole datasets: keep it to warnings.
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom's warnings quote element values, which may be patient data.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # pydicom warns about odd values by quoting them; values may be patient data.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
