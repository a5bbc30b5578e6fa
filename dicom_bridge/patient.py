"""Patient and study values copied into our outputs: invalid ones are fixed or dropped.

highdicom builds a SEG's (and, from the SEG, an SR's) Patient and Study modules from the
first source image: it parses ``PatientBirthDate``/``StudyDate`` as DA, ``PatientSex``
against M/F/O, and copies every root attribute of those modules. One malformed value in
a source header (``PatientBirthDate`` ``"19x0-13-45"``, ``PatientSex`` ``"Q"``) would
make it refuse the whole object, and that patient would get no result. A malformed value
is never a reason to withhold a result, so :func:`sanitized_sources` returns *copies* of
the source datasets (the spooled files and the datasets given are never modified) in
which each invalid value is fixed when its meaning is unambiguous (a date written
``1980-01-02``, a sex written ``m``) and otherwise emptied (Type 2 attributes stay
present, empty) or removed (Type 3). Valid values are kept exactly.

What is checked: the value's VR (pydicom's ``validate_value``: characters, lengths),
no control characters (other than ESC for character sets, and CR/LF/TAB/FF in LT), real
calendar dates and times, at most three PN groups of five components, PatientSex in
M/F/O, PatientAge as ``nnnD|W|M|Y`` and finite sizes and weights. The attributes changed
are logged by keyword only, never by value.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Callable, Sequence
from datetime import date
from typing import Final

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import TM, validate_value

LOG = logging.getLogger(__name__)

#: keyword -> (VR, type): Patient, Patient Study and General Study root attributes that
#: highdicom copies from the first source image into a SEG or SR.
CHECKED: Final[dict[str, tuple[str, int]]] = {
    "PatientName": ("PN", 2),
    "PatientID": ("LO", 2),
    "IssuerOfPatientID": ("LO", 3),
    "PatientBirthDate": ("DA", 2),
    "PatientBirthTime": ("TM", 3),
    "PatientSex": ("CS", 2),
    "OtherPatientIDs": ("LO", 3),
    "OtherPatientNames": ("PN", 3),
    "EthnicGroup": ("SH", 3),
    "PatientComments": ("LT", 3),
    "PatientAge": ("AS", 3),
    "PatientSize": ("DS", 3),
    "PatientWeight": ("DS", 3),
    "StudyDate": ("DA", 2),
    "StudyTime": ("TM", 2),
    "StudyID": ("SH", 2),
    "AccessionNumber": ("SH", 2),
    "ReferringPhysicianName": ("PN", 2),
    "StudyDescription": ("LO", 3),
}

_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")  # C0 and DEL, ESC (0x1b) allowed
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")  # LT keeps TAB CR LF FF
_DATE = re.compile(r"(\d{4})[-.]?(\d{2})[-.]?(\d{2})")
_AGE = re.compile(r"\d{3}[DWMY]")


def _date(text: str) -> str | None:
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    try:
        return date(*(int(g) for g in match.groups())).strftime("%Y%m%d")
    except ValueError:
        return None


def _time(text: str) -> str | None:
    try:
        TM(text.strip())
    except (ValueError, TypeError):
        return None
    return text.strip()


def _sex(text: str) -> str | None:
    value = text.strip().upper()
    return value if value in ("M", "F", "O") else None


def _age(text: str) -> str | None:
    return text.strip() if _AGE.fullmatch(text.strip()) else None


def _number(text: str) -> str | None:
    try:
        number = float(text)
    except (TypeError, ValueError):
        return None
    return text.strip() if math.isfinite(number) else None


_SEMANTIC: Final[dict[str, Callable[[str], str | None]]] = {
    "DA": _date,
    "TM": _time,
    "AS": _age,
    "DS": _number,
}


def _one(keyword: str, vr: str, value: object) -> str | None:
    """``value`` valid or fixed (a string), or None when it must be dropped."""
    text = str(value)
    pattern = _TEXT_CONTROL if vr == "LT" else _CONTROL
    if pattern.search(text):
        return None
    if keyword == "PatientSex":
        return _sex(text)
    check = _SEMANTIC.get(vr)
    fixed = check(text) if check is not None else text
    if fixed is None:
        return None
    if vr == "PN":
        groups = fixed.split("=")
        if len(groups) > 3 or any(len(g.split("^")) > 5 for g in groups):
            return None
    try:
        validate_value(vr, fixed, config.RAISE)
    except (ValueError, TypeError):
        return None
    return fixed


def patient_fixes(ds: Dataset) -> dict[str, object]:
    """Keyword -> the value to put in its place (``""``: emptied, ``None``: removed) for
    each invalid checked attribute of ``ds``; empty when everything is valid."""
    fixes: dict[str, object] = {}
    for keyword, (vr, kind) in CHECKED.items():
        try:
            element = ds.get(keyword)
        except (ValueError, TypeError, OverflowError):  # a raw value pydicom cannot convert
            fixes[keyword] = "" if kind == 2 else None
            continue
        if element in (None, ""):
            continue
        values = list(element) if isinstance(element, MultiValue) else [element]
        fixed = [_one(keyword, vr, v) for v in values]
        if any(f is None for f in fixed):
            fixes[keyword] = "" if kind == 2 else None
        elif [str(v) for v in values] != fixed:
            fixes[keyword] = fixed if len(fixed) > 1 else fixed[0]
    return fixes


def sanitized_sources(datasets: Sequence[Dataset]) -> tuple[Dataset, ...]:
    """``datasets`` with invalid patient/study values fixed or dropped: a dataset that
    needs no change is returned as is, any other as a changed deep copy."""
    out: list[Dataset] = []
    changed: set[str] = set()
    for ds in datasets:
        fixes = patient_fixes(ds)
        if not fixes:
            out.append(ds)
            continue
        fixed = copy.deepcopy(ds)
        for keyword, value in fixes.items():
            if value is None:
                del fixed[keyword]
            else:
                setattr(fixed, keyword, value)
        changed.update(fixes)
        out.append(fixed)
    if changed:
        LOG.warning(
            "invalid patient/study values in the source fixed or dropped in the output: %s",
            ", ".join(sorted(changed)),
        )
    return tuple(out)
