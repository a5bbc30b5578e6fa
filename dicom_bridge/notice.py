"""A "not processed" notice: one Secondary Capture image, in the study of a series the
appliance could not segment, that tells the radiologist what was not done and why.

A series that is routed to a model but rejected (gantry tilt, missing slices ...) or whose
job fails (no organ found, inference failed ...) would otherwise leave the reading
radiologist waiting for a result that never comes. :func:`write_notice` draws a short
text (a title, what was not done, why, the model if there was one) on a dark image,
so every PACS viewer shows it next to the series; the same words are in ImageComments
for whoever reads the header. It is a new series of the source's study, references an
image of the series it is about (ReferencedImageSequence) and carries no patient data in its pixels
(BurnedInAnnotation ``NO``); patient and study come from a source image (invalid values
fixed or dropped, as for the SEG).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from dicom_bridge.patient import sanitized_sources
from dicom_bridge.seg import RESEARCH_MARKER, SegmentationWriteError

#: Size of the notice image (rows, columns).
NOTICE_SHAPE: Final = (512, 512)
#: Characters per drawn line.
_WRAP: Final = 50
#: The most text a notice holds (it is a notice, not a report).
MAX_TEXT: Final = 600


@dataclass(frozen=True, slots=True)
class NoticeOptions:
    """What the notice says about itself."""

    research_only: bool = True
    manufacturer: str = "SegAppliance"
    series_number: int = 9905


def notice_lines(title: str, body: Sequence[str], research_only: bool) -> list[str]:
    """The lines drawn: the title, then each paragraph wrapped, a blank line between."""
    lines = [title, ""]
    for paragraph in body:
        lines.extend(textwrap.wrap(paragraph, _WRAP) or [""])
        lines.append("")
    if research_only:
        lines.append(RESEARCH_MARKER)
    return lines


def write_notice(
    source: Dataset,
    title: str,
    body: Sequence[str],
    options: NoticeOptions | None = None,
) -> Dataset:
    """The notice, as a Secondary Capture image in ``source``'s study, referencing
    ``source``'s series. ``title``: one short line (e.g. "NOT PROCESSED: liver CT model");
    ``body``: paragraphs in plain words. Raises :class:`SegmentationWriteError` for an
    empty or too long text."""
    options = options or NoticeOptions()
    text = " ".join([title, *body])
    if not title.strip() or len(text) > MAX_TEXT or not text.isprintable():
        raise SegmentationWriteError(
            f"a notice needs a title and at most {MAX_TEXT} printable characters"
        )
    first = sanitized_sources([source])[0]
    lines = notice_lines(title, body, options.research_only)
    rows, columns = NOTICE_SHAPE
    image = Image.new("RGB", (columns, rows), (16, 16, 16))
    draw = ImageDraw.Draw(image)
    size = 18
    font = ImageFont.load_default(size=size)
    y = 24
    for number, line in enumerate(lines):
        colour = (255, 200, 0) if number == 0 else (235, 235, 235)
        draw.text((20, y), line, fill=colour, font=font)
        y += size + 8
    pixels = np.asarray(image, dtype=np.uint8)
    notice = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=first,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        # highdicom needs an orientation for a patient-space image; a notice has none, so
        # it is emptied below (type 2: present, without a value)
        coordinate_system="PATIENT",
        patient_orientation=("L", "P"),
        series_instance_uid=generate_uid(),
        series_number=options.series_number,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=options.manufacturer,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    notice.SeriesDescription = (f"{RESEARCH_MARKER} " if options.research_only else "") + (
        "NOT PROCESSED"
    )
    del notice.PatientOrientation
    notice.add_new("PatientOrientation", "CS", None)
    notice.ImageType = ["DERIVED", "SECONDARY"]
    notice.BurnedInAnnotation = "NO"
    notice.Laterality = source.get("Laterality", "")
    notice.ImageComments = text
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    notice.ReferencedImageSequence = DicomSequence([reference])
    return notice
