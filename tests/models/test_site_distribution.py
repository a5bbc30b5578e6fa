"""Generated hospitals (models.site_distribution): a name determines its hospital, the
draws stay inside the documented ranges and cover every option, case counts have a long
tail of small sites, and a generated site's phantoms are made like a preset's."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from models.phantoms import AXIAL, SITE_PRESETS, ContrastPhase, PhantomKind, generate_phantom
from models.site_distribution import (
    DEFAULT_DISTRIBUTION,
    LESION_MIXES,
    SiteDistribution,
    generated_hospital,
    generated_names,
    is_generated,
    shift_score,
    site_hospital,
)

MANY = [generated_hospital(n) for n in generated_names(300, seed=7)]


def test_a_name_determines_its_hospital() -> None:
    assert generated_names(3) == ("gen0_001", "gen0_002", "gen0_003")
    assert generated_hospital("gen0_017") == generated_hospital("gen0_017")
    assert generated_hospital("gen0_017") != generated_hospital("gen1_017")
    assert generated_hospital("gen0_017") != generated_hospital("gen0_018")
    assert site_hospital("gen0_017") == generated_hospital("gen0_017")
    assert site_hospital("site_b") is SITE_PRESETS["site_b"]
    assert is_generated("gen12_001") and not is_generated("site_a")
    assert not is_generated("gen0_1") and not is_generated("gen0_0001")


@pytest.mark.parametrize("name", ["gen0_000", "site_q", "gen_001", "gen0_01", "../gen0_001"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(KeyError, match="gen<seed>_<001-999>"):
        site_hospital(name)


@pytest.mark.parametrize(("count", "seed"), [(0, 0), (1000, 0), (3, -1), (3, 10**6)])
def test_consortium_sizes_and_seeds_are_bounded(count: int, seed: int) -> None:
    with pytest.raises(ValueError):
        generated_names(count, seed)


def test_draws_stay_in_the_documented_ranges() -> None:
    d = DEFAULT_DISTRIBUTION
    for h in MANY:
        ct, mr = h.ct, h.mr
        assert d.ct_scale[0] <= ct.intensity_scale <= d.ct_scale[1]
        assert d.ct_offset_hu[0] <= ct.intensity_offset <= d.ct_offset_hu[1]
        assert d.ct_noise_hu[0] <= ct.noise_sigma <= d.ct_noise_hu[1]
        assert ct.spacing_mm[0] in d.ct_slice_mm
        assert d.ct_pixel_mm[0] <= ct.spacing_mm[1] == ct.spacing_mm[2] <= d.ct_pixel_mm[1]
        # the matrix covers the same field of view at every spacing
        extent = np.asarray(ct.matrix) * np.asarray(ct.spacing_mm)
        assert np.allclose(extent, (240, 400, 400), rtol=0.05)
        assert max(ct.matrix) <= 512
        assert d.mr_scale[0] <= mr.intensity_scale <= d.mr_scale[1]
        assert d.mr_bias[0] <= mr.bias_field <= d.mr_bias[1]
        assert mr.spacing_mm[0] in d.mr_slice_mm
        assert d.cases_range[0] <= h.cases <= d.cases_range[1]
        assert (
            h.description.startswith("generated (consortium 7")
            and f"{h.cases} cases" in h.description
        )


def test_every_option_occurs_in_a_large_consortium() -> None:
    phases = {h.ct.contrast_phase for h in MANY}
    assert phases == set(ContrastPhase) & {h.ct.contrast_phase for h in MANY} and len(phases) == 3
    assert {h.ct.lesions for h in MANY} == set(LESION_MIXES.values())
    oblique = sum(h.ct.orientation != AXIAL for h in MANY) / len(MANY)
    assert 0.15 < oblique < 0.35  # 0.25
    reversed_ = sum(h.ct.reverse_slice_order for h in MANY) / len(MANY)
    assert 0.2 < reversed_ < 0.4  # 0.3
    assert len({h.ct.spacing_mm[0] for h in MANY}) == len(DEFAULT_DISTRIBUTION.ct_slice_mm)


def test_case_counts_have_a_long_tail_of_small_sites() -> None:
    cases = np.asarray([h.cases for h in MANY])
    assert 9 <= np.median(cases) <= 15  # median 12
    assert cases.mean() > np.median(cases)  # skewed: a few large sites
    assert (cases <= 4).mean() > 0.05  # many small ones
    assert cases.max() >= 40


def test_distribution_values_are_checked() -> None:
    with pytest.raises(ValueError, match="ct_scale"):
        replace(DEFAULT_DISTRIBUTION, ct_scale=(1.2, 0.9))
    with pytest.raises(ValueError, match="ct_slice_weights"):
        replace(DEFAULT_DISTRIBUTION, ct_slice_weights=(1.0,))
    with pytest.raises(ValueError, match="oblique_probability"):
        SiteDistribution(oblique_probability=1.5)
    with pytest.raises(ValueError, match="cases_range"):
        SiteDistribution(cases_range=(0, 5))
    with pytest.raises(ValueError, match="mr_bias"):
        SiteDistribution(mr_bias=(0.1, 1.2))


def test_shift_score_grows_with_calibration_offsets() -> None:
    h = generated_hospital("gen0_001")
    calm = replace(h, ct=replace(h.ct, intensity_offset=0.0, intensity_scale=1.0))
    shifted = replace(h, ct=replace(h.ct, intensity_offset=30.0, intensity_scale=1.06))
    assert shift_score(calm, ct=True) == 0.0
    assert shift_score(shifted, ct=True) == pytest.approx(2.0)
    assert shift_score(SITE_PRESETS["site_a"], ct=True) == 0.0
    assert math.isfinite(shift_score(h, ct=False))


@pytest.mark.parametrize("kind", [PhantomKind.CT_ABDOMEN, PhantomKind.MR_T1C])
def test_a_generated_site_makes_phantoms(kind: PhantomKind) -> None:
    h = generated_hospital("gen0_004")
    profile = h.ct if kind == PhantomKind.CT_ABDOMEN else h.mr
    small = replace(profile, matrix=(24, 40, 40), spacing_mm=(8.0, 8.0, 8.0))
    phantom = generate_phantom(kind, small, 0)
    assert phantom.image.shape == (24, 40, 40)
    assert (phantom.labels == 1).any()
    again = generate_phantom(kind, small, 0)
    assert np.array_equal(phantom.image, again.image)
