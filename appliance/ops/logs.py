"""Logging set-up: one format (text or JSON lines), third-party chatter turned down, no
patient data, one line per record.

One record is always one line: :class:`OneLineFilter` on the handler escapes control
characters (``\n``, ``\r``, other C0/C1 controls, U+2028/U+2029) in every record's final
message, whichever logger made it (pynetdicom's included, which quotes UIDs and AE titles
that a peer chose), so a value containing a newline cannot forge a log line. The text
format escapes the rest of its line too (a traceback becomes ``\n``-separated).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from datetime import UTC, datetime

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape: a newline becomes a
    backslash and ``n``, other controls ``\\xNN`` or ``\\uNNNN``."""
    return _CONTROL.sub(_escape_one, text)


class OneLineFilter(logging.Filter):
    """Escapes control characters in a record's final message (``msg % args``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it when formatting
            return True
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message`` on one line (tracebacks included, escaped)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return escape_controls(super().format(record))


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
    handler.addFilter(OneLineFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
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
