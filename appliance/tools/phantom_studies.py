"""What ``appliance phantoms generate`` does: phantoms as DICOM series with their truth.

The generator lives in ``models.phantoms`` and the DICOM writer in
``dicom_bridge.phantom_series``; this module wires them (the appliance is the only layer
allowed to import both). Each case is written as::

    OUT/<kind>-<site>-<case>/dicom/*.dcm   one file per slice (write_phantom_series)
    OUT/<kind>-<site>-<case>/truth.npz     labels, masks and lesion metadata (save_truth)
    OUT/manifest.json                      one entry per case written by this run

Every identity is invented and says so (``PHANTOM^SYNTHETIC^...``); nothing here is a
real patient.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from models.phantoms import (
    CT_DEFAULT,
    MR_DEFAULT,
    SITE_PRESETS,
    Phantom,
    PhantomKind,
    SiteProfile,
    generate_phantom,
)
from models.site_distribution import site_hospital

__all__ = [
    "DEFAULT_SITE",
    "GeneratedCase",
    "case_name",
    "generate_cases",
    "resolve_profile",
    "site_names",
]

DEFAULT_SITE: Final = "default"
MANIFEST_FILENAME: Final = "manifest.json"
_SERIES_NUMBER: Final[Mapping[PhantomKind, int]] = {
    PhantomKind.CT_ABDOMEN: 2,
    PhantomKind.MR_T1C: 5,
    PhantomKind.MR_FLAIR: 4,
}


@dataclass(frozen=True, slots=True)
class GeneratedCase:
    """One written phantom study: where it is and what its truth says."""

    case: int
    kind: PhantomKind
    site: str
    directory: Path
    series_dir: Path
    truth_path: Path
    study_uid: str
    series_uid: str
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    modality: str
    label_volumes_ml: Mapping[str, float]
    lesions: int
    files: int


def site_names() -> list[str]:
    """``default`` and the preset sites, in the order ``list-sites`` prints them."""
    return [DEFAULT_SITE, *SITE_PRESETS]


def resolve_profile(
    kind: PhantomKind | str,
    site: str,
    *,
    seed: int | None = None,
    matrix: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
) -> SiteProfile:
    """The scanner profile of ``site`` for ``kind``, with optional overrides.

    Raises :class:`ValueError` for an unknown site or an override the profile refuses.
    """
    kind = PhantomKind(kind)
    is_ct = kind == PhantomKind.CT_ABDOMEN
    if site == DEFAULT_SITE:
        profile = CT_DEFAULT if is_ct else MR_DEFAULT
    else:
        try:
            hospital = site_hospital(site)
        except KeyError:
            raise ValueError(
                f"unknown site {site!r}; choose one of {', '.join(site_names())} "
                "or a generated site gen<seed>_<001-999>"
            ) from None
        profile = hospital.ct if is_ct else hospital.mr
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = int(seed)
    if matrix is not None:
        changes["matrix"] = tuple(int(n) for n in matrix)
    if spacing_mm is not None:
        changes["spacing_mm"] = tuple(float(v) for v in spacing_mm)
    return dataclasses.replace(profile, **changes) if changes else profile


def case_name(kind: PhantomKind, site: str, case: int) -> str:
    return f"{kind.value}-{site}-{case:03d}"


def generate_cases(
    kind: PhantomKind | str,
    site: str,
    cases: int,
    out: Path,
    *,
    seed: int | None = None,
    first_case: int = 0,
    matrix: tuple[int, int, int] | None = None,
    spacing_mm: tuple[float, float, float] | None = None,
    on_case: Callable[[GeneratedCase], None] | None = None,
) -> list[GeneratedCase]:
    """Generate and write ``cases`` phantoms of ``kind`` at ``site`` into ``out``.

    Case numbers run from ``first_case``; case ``k`` is ``profile.rng(k)``, so the same
    site, seed and case number always give the same patient. ``on_case`` is called after
    each case is written (for progress output).
    """
    from dicom_bridge.phantom_series import TRUTH_FILENAME, save_truth, write_phantom_series
    from dicom_bridge.synthetic import SeriesIdentity

    kind = PhantomKind(kind)
    if cases < 1:
        raise ValueError("cases must be at least 1")
    profile = resolve_profile(kind, site, seed=seed, matrix=matrix, spacing_mm=spacing_mm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[GeneratedCase] = []
    for case in range(first_case, first_case + cases):
        phantom = generate_phantom(kind, profile, case)
        name = case_name(kind, site, case)
        directory = out / name
        series_dir = directory / "dicom"
        if series_dir.exists() and any(series_dir.iterdir()):
            raise FileExistsError(f"{series_dir} already holds files; choose another --out")
        identity = SeriesIdentity(
            patient_name=f"PHANTOM^SYNTHETIC^{kind.value.upper()}^{case:03d}",
            patient_id=f"PHANTOM-{site}-{kind.value}-{case:03d}"[:64],
            series_number=_SERIES_NUMBER[kind],
            series_description=phantom.series_description,
            body_part=phantom.body_part,
        )
        files = write_phantom_series(
            series_dir,
            phantom.image,
            phantom.affine_lps,
            modality=phantom.modality,
            identity=identity,
            reverse_slice_order=profile.reverse_slice_order,
        )
        volumes = {
            phantom.label_names[label]: round(phantom.volume_ml(label), 3)
            for label in sorted(phantom.label_names)
        }
        metadata = _metadata(phantom, kind, site, case, identity, volumes)
        truth_path = save_truth(
            directory / TRUTH_FILENAME,
            phantom.labels,
            phantom.affine_lps,
            masks={k: v for k, v in phantom.masks.items() if k.isidentifier()},
            metadata=metadata,
        )
        spacing = phantom.spacing_mm
        result = GeneratedCase(
            case=case,
            kind=kind,
            site=site,
            directory=directory,
            series_dir=series_dir,
            truth_path=truth_path,
            study_uid=identity.study_uid,
            series_uid=identity.series_uid,
            shape=(
                int(phantom.image.shape[0]),
                int(phantom.image.shape[1]),
                int(phantom.image.shape[2]),
            ),
            spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            modality=phantom.modality,
            label_volumes_ml=volumes,
            lesions=len(phantom.lesions),
            files=len(files),
        )
        written.append(result)
        if on_case is not None:
            on_case(result)
    _write_manifest(out, written)
    return written


def _metadata(
    phantom: Phantom,
    kind: PhantomKind,
    site: str,
    case: int,
    identity: Any,
    volumes: Mapping[str, float],
) -> dict[str, Any]:
    profile = phantom.profile
    return {
        "kind": kind.value,
        "site": site,
        "profile": profile.name,
        "seed": int(profile.seed),
        "case": case,
        "modality": phantom.modality,
        "series_description": phantom.series_description,
        "body_part": phantom.body_part,
        "study_uid": identity.study_uid,
        "series_uid": identity.series_uid,
        "frame_of_reference_uid": identity.frame_of_reference_uid,
        "contrast_phase": str(profile.contrast_phase),
        "reverse_slice_order": bool(profile.reverse_slice_order),
        "label_names": {str(k): v for k, v in sorted(phantom.label_names.items())},
        "label_volumes_ml": dict(volumes),
        "lesions": [_lesion(lesion) for lesion in phantom.lesions],
    }


def _lesion(lesion: Any) -> dict[str, Any]:
    return {
        "kind": str(lesion.kind),
        "centre_lps": [float(v) for v in lesion.centre_lps],
        "diameter_mm": float(lesion.diameter_mm),
        "axes_mm": [float(v) for v in lesion.axes_mm],
        "voxels": int(lesion.voxels),
        "volume_ml": float(lesion.volume_ml),
        "equivalent_diameter_mm": float(lesion.equivalent_diameter_mm),
    }


def _write_manifest(out: Path, cases: list[GeneratedCase]) -> None:
    entries = [
        {
            "case": c.case,
            "kind": c.kind.value,
            "site": c.site,
            "directory": c.directory.name,
            "series_dir": str(c.series_dir.relative_to(out)),
            "truth": str(c.truth_path.relative_to(out)),
            "study_uid": c.study_uid,
            "series_uid": c.series_uid,
            "shape": list(c.shape),
            "spacing_mm": list(c.spacing_mm),
            "label_volumes_ml": dict(c.label_volumes_ml),
        }
        for c in cases
    ]
    path = out / MANIFEST_FILENAME
    previous: list[dict[str, Any]] = []
    if path.exists():
        try:
            loaded = json.loads(path.read_text())
            previous = [e for e in loaded.get("cases", []) if isinstance(e, dict)]
        except (OSError, ValueError, AttributeError):
            previous = []
    names = {e["directory"] for e in entries}
    merged = [e for e in previous if e.get("directory") not in names] + entries
    path.write_text(json.dumps({"cases": merged}, indent=2) + "\n")
