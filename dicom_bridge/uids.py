"""UID validation and short, non-identifying references to studies and series."""

from __future__ import annotations

import hashlib
import re

from dicom_bridge.errors import InvalidUIDError

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LOOSE_UID_RE = re.compile(r"^[0-9.]+$")
MAX_UID_LENGTH = 64


def validate_uid(value: object, *, what: str = "UID") -> str:
    """Return ``value`` as a UID string safe to use in a file name, or raise.

    A UID made of digits and dots, at most 64 characters, that neither starts nor ends
    with a dot and has no empty component. Leading zeros inside a component are tolerated
    (some scanners write them) because they cannot escape a directory.
    """
    text = str(value).strip().rstrip("\x00") if value is not None else ""
    if not text:
        raise InvalidUIDError(f"{what} is missing")
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUIDError(f"{what} is longer than {MAX_UID_LENGTH} characters")
    if (
        not _LOOSE_UID_RE.fullmatch(text)
        or text.startswith(".")
        or text.endswith(".")
        or ".." in text
    ):
        raise InvalidUIDError(f"{what} has characters other than digits and single dots")
    return text


def is_strict_uid(text: str) -> bool:
    """True when ``text`` also follows the no-leading-zero rule of PS3.5 9.1."""
    return bool(_UID_RE.fullmatch(text)) and len(text) <= MAX_UID_LENGTH


def short_ref(uid: str) -> str:
    """A short hash of a UID for logs: refers to a study/series without exposing it."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:12]
