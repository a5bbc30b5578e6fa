"""One log record is one line, whatever a peer put into the values logged."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from appliance.ops.logs import configure_logging, escape_controls

FORGED = "1.2.840.99\n2030-01-01 00:00:00,000 INFO appliance: forged line\r\x1b[2J\u2028end"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.split("\n") if line]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_newline_in_a_logged_value_stays_on_one_line(
    fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("INFO", fmt)
    logging.getLogger("pynetdicom.events").warning("Affected SOP Instance UID: %s", FORGED)
    logging.getLogger("appliance.test").info("stored %s", FORGED)
    lines = _lines(capsys)
    assert len(lines) == 2, lines
    for line in lines:
        message = json.loads(line)["message"] if fmt == "json" else line
        assert "1.2.840.99\\n2030-01-01" in message
        assert "\\r\\x1b[2J\\u2028end" in message
        assert not any(c in message for c in "\n\r\x1b\u2028")
    if fmt == "text":
        assert lines[0].endswith("Affected SOP Instance UID: " + escape_controls(FORGED))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_traceback_is_part_of_the_one_line(
    fmt: str, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    configure_logging("INFO", fmt)
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        logging.getLogger("appliance.test").exception("failed on %s", "x\ny")
    (line,) = _lines(capsys)
    if fmt == "json":
        entry = json.loads(line)
        assert entry["message"] == "failed on x\\ny"
        assert "ValueError: bad\nvalue" in entry["exception"]
    else:
        assert "failed on x\\ny\\nTraceback" in line and "ValueError: bad\\nvalue" in line


def test_escape_controls_keeps_plain_text() -> None:
    assert escape_controls("study 3f2a9c stored in 1.2 s, ok") == "study 3f2a9c stored in 1.2 s, ok"
    assert escape_controls("a\tb\x00c\x7f") == "a\\tb\\x00c\\x7f"
