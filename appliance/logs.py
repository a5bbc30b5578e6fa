"""Logging set-up: one format, third-party chatter turned down, no patient data."""

from __future__ import annotations

import logging
import sys
import warnings


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # pynetdicom logs PDUs and, at DEBUG, whole datasets: keep it to warnings.
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # pydicom's warnings quote element values, which may be patient data.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    # pydicom warns about odd values by quoting them; values may be patient data.
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
