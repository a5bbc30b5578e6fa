"""PNG previews of a segmentation over its images (numpy + Pillow, no plotting library).

``appliance preview`` uses :func:`preview_series`: it loads the series' images (from the
store's instance paths, with :func:`dicom_bridge.volume.load_series_volume`), reads the
SEG onto the same grid (:func:`dicom_bridge.seg_reader.read_seg_labelmap`) and writes one
PNG per chosen slice. The SEG is the newest the pipeline wrote for the series
(``<storage.root>/results/<series_uid>/gen-<n>/seg.dcm``, highest ``n``) unless a path is
given (e.g. a radiologist's corrected SEG).

Each PNG is the image panel (windowed: CT W400/L40, MR 1st-99.5th percentile of the
non-zero voxels; resampled to square pixels, at least :data:`MIN_PANEL` pixels on its
long side) with the segments blended in and outlined, above a text band: the legend
(colour, label, volume in mL) and a caption (view and slice, the SEG's
SeriesDescription/ContentLabel, and ``RESEARCH USE ONLY`` when the SEG says so).
Colours are the SEG's Recommended Display CIELab Values, else a fixed palette.

Slices are chosen in the acquisition plane (and, with ``all_planes``, in the two
reformatted planes): the slice with the largest lesion cross-section, the slice through
the mask's centroid, then evenly spaced slices where the mask is present. No patient
identifiers are drawn or put in file names.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CT_WINDOW",
    "MIN_PANEL",
    "PALETTE",
    "PreviewImage",
    "PreviewSegment",
    "choose_slices",
    "find_latest_seg",
    "render_slice",
    "seg_display_info",
    "window_to_uint8",
    "write_previews",
]

#: Abdominal CT window as (width, level) in HU.
CT_WINDOW: Final = (400.0, 40.0)
#: MR window: these percentiles of the non-zero voxels.
MR_PERCENTILES: Final = (1.0, 99.5)
#: The image panel's long side is scaled up to at least this many pixels.
MIN_PANEL: Final = 384
#: Opacity of the segment fill (outlines are opaque).
FILL_ALPHA: Final = 0.35
#: Segment colours when the SEG recommends none (RGB).
PALETTE: Final = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
)
RESEARCH_TEXT: Final = "RESEARCH USE ONLY"
_LINE_HEIGHT: Final = 14
_MARGIN: Final = 6
_GEN_RE: Final = re.compile(r"^gen-(\d{1,9})$")
_UID_RE: Final = re.compile(r"^[0-9.]{1,64}$")
_AXIS_NAMES: Final = {0: "sagittal", 1: "coronal", 2: "axial"}  # dominant LPS axis -> plane


@dataclass(frozen=True, slots=True)
class PreviewSegment:
    """One segment to draw: its value in the label map, label, colour and lesion flag."""

    number: int
    label: str
    color: tuple[int, int, int]
    is_lesion: bool = False


@dataclass(frozen=True, slots=True)
class PreviewImage:
    """A written PNG: its view, slice, and where the image panel lies in it.

    The panel occupies ``(0, 0, panel_size[0], panel_size[1])`` (width, height);
    ``scale`` is display pixels per source pixel along (vertical, horizontal), and
    ``flipped`` says whether the panel's rows run against the source axis.
    """

    path: Path
    plane: str
    axis: int
    index: int
    reason: str
    panel_size: tuple[int, int]
    scale: tuple[float, float]
    flipped: bool


def find_latest_seg(results_root: Path, series_uid: str) -> Path | None:
    """``results_root/<series_uid>/gen-<n>/seg.dcm`` with the highest ``n``, or None."""
    if not _UID_RE.fullmatch(series_uid):
        raise ValueError("not a valid Series Instance UID")
    base = Path(results_root) / series_uid
    if not base.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in base.iterdir():
        match = _GEN_RE.fullmatch(child.name)
        seg = child / "seg.dcm"
        if match and seg.is_file():
            gen = int(match.group(1))
            if best is None or gen > best[0]:
                best = (gen, seg)
    return None if best is None else best[1]


# --- SEG display attributes ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegDisplayInfo:
    colors: dict[int, tuple[int, int, int]]
    caption: str
    research_only: bool


def seg_display_info(seg_path: Path) -> SegDisplayInfo:
    """Recommended colours per segment number and the caption text of a SEG file."""
    from highdicom.color import CIELabColor
    from pydicom import dcmread

    ds = dcmread(Path(seg_path), stop_before_pixels=True)
    colors: dict[int, tuple[int, int, int]] = {}
    for item in ds.get("SegmentSequence", []) or []:
        lab = item.get("RecommendedDisplayCIELabValue")
        if lab is None or len(lab) != 3:
            continue
        try:
            rgb = CIELabColor.from_dicom_value(tuple(int(v) for v in lab)).to_rgb()
        except (TypeError, ValueError):
            continue
        colors[int(item.SegmentNumber)] = (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    description = str(ds.get("SeriesDescription", "") or "")
    label = str(ds.get("ContentLabel", "") or "")
    texts = " ".join(
        str(ds.get(k, "") or "")
        for k in ("SeriesDescription", "ContentDescription", "ImageComments")
    )
    research = "RESEARCH" in texts.upper()
    parts = [p for p in (description, label if label not in description else "") if p]
    return SegDisplayInfo(colors=colors, caption=" | ".join(parts), research_only=research)


# --- windowing and slice choice -----------------------------------------------------------


def window_to_uint8(volume: np.ndarray, modality: str) -> np.ndarray:
    """Grey values 0..255: CT with :data:`CT_WINDOW`, anything else by percentiles."""
    data = np.asarray(volume, dtype=np.float32)
    if modality.upper() == "CT":
        width, level = CT_WINDOW
        low, high = level - width / 2.0, level + width / 2.0
    else:
        values = data[data > 0]
        if values.size == 0:
            values = data.ravel()
        low, high = (float(v) for v in np.percentile(values, MR_PERCENTILES))
    if high <= low:
        high = low + 1.0
    scaled = (data - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def choose_slices(
    labelmap: np.ndarray, axis: int, count: int, lesion_numbers: Sequence[int] = ()
) -> list[tuple[int, str]]:
    """Up to ``count`` slice indices along ``axis`` with why each was chosen, in order.

    Largest lesion cross-section first (when ``lesion_numbers`` are present), then the
    slice through the mask's centroid, then evenly spaced slices over the mask's extent.
    An empty mask gives evenly spaced slices over the whole volume.
    """
    if count < 1:
        return []
    n = labelmap.shape[axis]
    other = tuple(a for a in range(3) if a != axis)
    chosen: list[tuple[int, str]] = []

    def add(index: int, reason: str) -> None:
        if index not in {i for i, _ in chosen} and len(chosen) < count:
            chosen.append((int(index), reason))

    mask = labelmap != 0
    area = mask.sum(axis=other)
    if not area.any():
        for index in _evenly(0, n - 1, count):
            add(index, "no mask")
        return sorted(chosen)
    if lesion_numbers:
        lesion_area = np.isin(labelmap, list(lesion_numbers)).sum(axis=other)
        if lesion_area.any():
            add(int(np.argmax(lesion_area)), "largest lesion")
    weights = area.astype(np.float64)
    centroid = round(float((np.arange(n) * weights).sum() / weights.sum()))
    add(centroid, "centroid")
    present = np.flatnonzero(area)
    for index in _evenly(int(present[0]), int(present[-1]), count + len(chosen)):
        if area[index]:
            add(index, "mask extent")
    for extra in present.tolist():  # fill up when the even spacing hit repeats
        add(int(extra), "mask extent")
    return sorted(chosen)


def _evenly(first: int, last: int, count: int) -> list[int]:
    if count <= 1 or last <= first:
        return [(first + last) // 2]
    return sorted({round(float(v)) for v in np.linspace(first, last, count + 2)[1:-1]})


# --- drawing ------------------------------------------------------------------------------


def _plane_name(affine: np.ndarray, axis: int) -> str:
    normal = np.asarray(affine[:3, axis], dtype=np.float64)
    return _AXIS_NAMES[int(np.argmax(np.abs(normal)))]


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def render_slice(
    grey: np.ndarray,
    labels: np.ndarray,
    segments: Sequence[PreviewSegment],
    pixel_spacing: tuple[float, float],
) -> tuple[Image.Image, tuple[float, float]]:
    """The RGB panel of one 2D slice with its segments, resampled to square pixels.

    Returns the image and its scale (display pixels per source pixel, vertical then
    horizontal). Segments are filled at :data:`FILL_ALPHA` and outlined opaquely.
    """
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float32)
    for segment in segments:
        mask = labels == segment.number
        if not mask.any():
            continue
        color = np.asarray(segment.color, dtype=np.float32)
        rgb[mask] = (1.0 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * color
        rgb[_outline(mask)] = color
    image = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), mode="RGB")
    rows, cols = grey.shape
    sy, sx = (float(v) for v in pixel_spacing)
    unit = min(sy, sx)
    height, width = rows * sy / unit, cols * sx / unit
    zoom = max(1.0, MIN_PANEL / max(height, width))
    size = (max(1, round(width * zoom)), max(1, round(height * zoom)))
    image = image.resize(size, Image.Resampling.NEAREST)
    return image, (size[1] / rows, size[0] / cols)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=12)
    except (TypeError, OSError, ImportError):  # no FreeType: the bitmap font
        return ImageFont.load_default()


def _compose(
    panel: Image.Image, legend: Sequence[tuple[tuple[int, int, int], str]], captions: list[str]
) -> Image.Image:
    font = _font()
    lines = len(legend) + len(captions)
    band = 2 * _MARGIN + _LINE_HEIGHT * lines
    width = panel.width
    out = Image.new("RGB", (width, panel.height + band), (0, 0, 0))
    out.paste(panel, (0, 0))
    draw = ImageDraw.Draw(out)
    y = panel.height + _MARGIN
    for color, text in legend:
        draw.rectangle([_MARGIN, y + 2, _MARGIN + 10, y + 12], fill=color)
        draw.text((_MARGIN + 16, y), text, fill=(255, 255, 255), font=font)
        y += _LINE_HEIGHT
    for text in captions:
        colour = (255, 200, 0) if RESEARCH_TEXT in text else (220, 220, 220)
        while len(text) > 4 and draw.textlength(text, font=font) > width - 2 * _MARGIN:
            text = text[:-4] + "..."
        draw.text((_MARGIN, y), text, fill=colour, font=font)
        y += _LINE_HEIGHT
    return out


def write_previews(
    image: np.ndarray,
    affine: np.ndarray,
    modality: str,
    labelmap: np.ndarray,
    segments: Sequence[PreviewSegment],
    out_dir: Path,
    *,
    slices: int = 5,
    all_planes: bool = False,
    caption: str = "",
    research_only: bool = False,
    prefix: str = "preview",
) -> list[PreviewImage]:
    """Write PNGs of ``labelmap`` over ``image`` (both on one grid) into ``out_dir``."""
    if image.shape != labelmap.shape or image.ndim != 3:
        raise ValueError(f"image {image.shape} and label map {labelmap.shape} must be one 3D grid")
    if slices < 1:
        raise ValueError("slices must be at least 1")
    grey = window_to_uint8(image, modality)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)
    voxel_ml = float(abs(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    lesions = [s.number for s in segments if s.is_lesion]
    counts = np.bincount(labelmap.ravel().astype(np.int64), minlength=1)
    legend = [
        (
            s.color,
            f"{s.label}: {(counts[s.number] if s.number < counts.size else 0) * voxel_ml:.1f} mL",
        )
        for s in segments
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[PreviewImage] = []
    for axis in (0, 1, 2) if all_planes else (0,):
        plane = _plane_name(affine, axis)
        for index, reason in choose_slices(labelmap, axis, slices, lesions):
            g2 = np.take(grey, index, axis=axis)
            l2 = np.take(labelmap, index, axis=axis)
            # spacing of the 2D slice: (vertical axis, horizontal axis) of the source grid
            v_axis, h_axis = (a for a in range(3) if a != axis)
            flipped = False
            if axis != 0 and float(affine[2, v_axis]) > 0:  # superior up in reformats
                g2, l2, flipped = g2[::-1], l2[::-1], True
            panel, scale = render_slice(
                g2, l2, segments, (float(spacing[v_axis]), float(spacing[h_axis]))
            )
            captions = [
                f"{plane} {index + 1}/{labelmap.shape[axis]} ({reason})",
                *(part for part in caption.split(" | ") if part),
                *([RESEARCH_TEXT] if research_only and RESEARCH_TEXT not in caption else []),
            ]
            path = out_dir / f"{prefix}-{plane}-{index + 1:04d}.png"
            _compose(panel, legend, captions).save(path, format="PNG")
            written.append(
                PreviewImage(
                    path=path,
                    plane=plane,
                    axis=axis,
                    index=index,
                    reason=reason,
                    panel_size=(panel.width, panel.height),
                    scale=scale,
                    flipped=flipped,
                )
            )
    return written


def preview_series(
    source_paths: Sequence[Path],
    seg_path: Path,
    out_dir: Path,
    *,
    slices: int = 5,
    all_planes: bool = False,
) -> list[PreviewImage]:
    """Load the series and the SEG on its grid, then :func:`write_previews`."""
    from dicom_bridge.codes import MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    from dicom_bridge.seg_reader import OverlapPolicy, read_seg_labelmap
    from dicom_bridge.volume import load_series_volume

    volume = load_series_volume(source_paths)
    seg = read_seg_labelmap(seg_path, source_paths, overlap=OverlapPolicy.HIGHEST)
    if seg.labelmap.shape != volume.shape:
        raise ValueError(
            f"the SEG's label map {seg.labelmap.shape} does not match the series {volume.shape}"
        )
    info = seg_display_info(seg_path)
    segments = [
        PreviewSegment(
            number=s.number,
            label=s.label or f"segment {s.number}",
            color=info.colors.get(s.number, PALETTE[(s.number - 1) % len(PALETTE)]),
            is_lesion=bool(
                s.category is not None
                and s.category.same_concept(MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
            ),
        )
        for s in seg.segments
    ]
    return write_previews(
        volume.array,
        volume.affine,
        volume.modality,
        seg.labelmap,
        segments,
        out_dir,
        slices=slices,
        all_planes=all_planes,
        caption=info.caption,
        research_only=info.research_only,
    )
