"""A small abdominal CT series with a liver in it, for tests that need a finished job.

The shipped ``liver_ct`` model is two-stage: its first stage looks for the liver and a
series without one ends as ``nothing_found``, with nothing sent. A test that needs a SEG
back therefore sends this series - a generated abdomen (liver, lesions, other organs) on a
coarse 3 mm grid, which the shipped model segments in seconds on a CPU - rather than the
plain ellipsoid of :func:`dicom_bridge.synthetic.ellipsoid_phantom`, which has no liver.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Final

from dicom_bridge.phantom_series import write_phantom_series
from dicom_bridge.synthetic import SeriesIdentity
from models.phantoms import CT_DEFAULT, Phantom, PhantomKind, SiteProfile, generate_phantom

#: 32 slices of 96 x 96 pixels, 3 mm voxels: the abdomen around the liver.
SMALL_CT: Final = replace(
    CT_DEFAULT, name="small_ct", spacing_mm=(3.0, 3.0, 3.0), matrix=(32, 96, 96)
)


def liver_phantom(case: int = 0, profile: SiteProfile = SMALL_CT) -> Phantom:
    """Case ``case`` of the small abdominal CT profile (deterministic per case)."""
    return generate_phantom(PhantomKind.CT_ABDOMEN, profile, case)


def write_liver_series(
    directory: Path,
    identity: SeriesIdentity | None = None,
    *,
    case: int = 0,
    profile: SiteProfile = SMALL_CT,
) -> list[Path]:
    """Write case ``case`` as one CT file per slice; return the paths in instance order."""
    phantom = liver_phantom(case, profile)
    return write_phantom_series(
        directory, phantom.image, phantom.affine_lps, modality="CT", identity=identity
    )
