"""Coded concepts at the package boundary: a plain value type and the codes the appliance uses.

:class:`CodeValue` is what crosses into ``dicom_bridge`` from above (task specs name their
labels with it); it holds no highdicom object, and this module imports no DICOM library
at module level, so any layer may build one. :meth:`CodeValue.to_coded_concept` turns it
into a :class:`highdicom.sr.CodedConcept` where a DICOM object is written.

Every constant below was checked against pydicom's code dictionary
(``pydicom.sr.codedict.codes``, generated from DICOM PS3.16), except where the comment
says otherwise; ``tests/dicom_bridge/test_seg.py`` keeps them in step with it. Two codes
differ from what one might guess:

- "Anatomical Structure" (CID 7150, segmentation property category) is SCT 91723000.
  SCT 123037004 is "Body structure", the SNOMED top concept, and is in no DICOM context
  group for segment categories.
- The algorithm family "Artificial Intelligence" (CID 7162) is DCM 123110.
  DCM 113037 is "Rejected for Patient Safety Reasons".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from highdicom.sr import CodedConcept

__all__ = [
    "ANATOMICAL_STRUCTURE",
    "ARTIFICIAL_INTELLIGENCE",
    "BRAIN",
    "CT_UNSPECIFIED_BODY_REGION",
    "CUBIC_CENTIMETER",
    "DIAMETER",
    "GLIOMA",
    "LIVER",
    "MAXIMUM",
    "MILLIMETER",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "MRI_UNSPECIFIED_BODY_REGION",
    "NEOPLASM",
    "NO_UNITS",
    "NUMBER_OF_LESIONS",
    "SUM_OF_SEGMENTED_VOXELS",
    "VOLUME",
    "CodeValue",
]

_SCHEME_RE: Final = re.compile(r"^[A-Za-z0-9_.\- ]{1,16}$")


@dataclass(frozen=True, slots=True)
class CodeValue:
    """A coded concept: coding scheme designator, code value, code meaning.

    ``CodeValue("SCT", "10200004", "Liver")``. Two values name the same concept when
    scheme and value agree (:meth:`same_concept`); the meaning is display text.
    """

    scheme: str
    value: str
    meaning: str

    def __post_init__(self) -> None:
        if not _SCHEME_RE.fullmatch(self.scheme):
            raise ValueError(f"coding scheme designator {self.scheme!r} is not a DICOM SH value")
        if not self.value or "\\" in self.value or len(self.value) > 64:
            raise ValueError(f"code value {self.value!r} is empty, too long or has a backslash")
        if not self.meaning or "\\" in self.meaning or len(self.meaning) > 64:
            raise ValueError(
                f"code meaning {self.meaning!r} is empty, longer than 64 characters or has a "
                "backslash"
            )

    def __str__(self) -> str:
        return f'({self.value}, {self.scheme}, "{self.meaning}")'

    def same_concept(self, other: object) -> bool:
        """True when ``other`` (a CodeValue, highdicom CodedConcept or pydicom Code) has the
        same scheme and value; meanings may differ."""
        scheme = getattr(other, "scheme", None) or getattr(other, "scheme_designator", None)
        return scheme == self.scheme and getattr(other, "value", None) == self.value

    def to_coded_concept(self) -> CodedConcept:
        """This concept as a :class:`highdicom.sr.CodedConcept`."""
        from highdicom.sr import CodedConcept

        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)

    @classmethod
    def from_coded(cls, code: Any) -> CodeValue:
        """From a highdicom ``CodedConcept``, a pydicom ``Code``, a code sequence item, or
        any object with ``scheme``, ``value`` and ``meaning`` (e.g. ``models.tasks.Code``)."""
        if hasattr(code, "scheme_designator"):
            return cls(str(code.scheme_designator), str(code.value), str(code.meaning))
        if hasattr(code, "scheme") and hasattr(code, "meaning"):
            return cls(str(code.scheme), str(code.value), str(code.meaning))
        value = code.get("CodeValue") or code.get("LongCodeValue") or code.get("URNCodeValue")
        return cls(str(code.CodingSchemeDesignator), str(value), str(code.CodeMeaning))


# --- segment property categories (CID 7150) ---------------------------------------------
ANATOMICAL_STRUCTURE: Final = CodeValue("SCT", "91723000", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE: Final = CodeValue(
    "SCT", "49755003", "Morphologically Abnormal Structure"
)

# --- segment property types and anatomic regions ------------------------------------------
LIVER: Final = CodeValue("SCT", "10200004", "Liver")
BRAIN: Final = CodeValue("SCT", "12738006", "Brain")
#: Neoplasm (CID 7151, and the lesion types of CID 7159/7194): the liver tumour segment,
#: with LIVER as its anatomic region; also the glioma whole-tumour segment with BRAIN.
NEOPLASM: Final = CodeValue("SCT", "108369006", "Neoplasm")
#: Glioma (morphologic abnormality). NOT in pydicom's dictionary nor in a DICOM context
#: group; checked against SNOMED CT references only. Prefer NEOPLASM + anatomic region
#: BRAIN + label "Glioma" where a DICOM-listed code is wanted.
GLIOMA: Final = CodeValue("SCT", "393564001", "Glioma")

# --- algorithm family (CID 7162) ---------------------------------------------------------
ARTIFICIAL_INTELLIGENCE: Final = CodeValue("DCM", "123110", "Artificial Intelligence")

# --- measurement report (TID 1500 / TID 1411) ----------------------------------------------
VOLUME: Final = CodeValue("SCT", "118565006", "Volume")
DIAMETER: Final = CodeValue("SCT", "81827009", "Diameter")
#: pydicom's meaning is "Number of lesions (observable entity)"; the short form is shown.
NUMBER_OF_LESIONS: Final = CodeValue("SCT", "246206008", "Number of lesions")
MAXIMUM: Final = CodeValue("SCT", "56851009", "Maximum")
SUM_OF_SEGMENTED_VOXELS: Final = CodeValue(
    "DCM", "126030", "Sum of segmented voxel method for volume"
)
#: Volume unit: 1 cm3 = 1 mL. UCUM "cm3" is the unit DICOM lists (CID 7181/7462).
CUBIC_CENTIMETER: Final = CodeValue("UCUM", "cm3", "cubic centimeter")
MILLIMETER: Final = CodeValue("UCUM", "mm", "mm")
NO_UNITS: Final = CodeValue("UCUM", "1", "no units")
CT_UNSPECIFIED_BODY_REGION: Final = CodeValue("LN", "25045-6", "CT unspecified body region")
MRI_UNSPECIFIED_BODY_REGION: Final = CodeValue("LN", "25056-3", "MRI unspecified body region")
