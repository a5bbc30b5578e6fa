"""Phantoms that look more like patients: per-case variation, detailed anatomy, profiles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from models.demo_weights import PROFILES, named_profile
from models.phantom_anatomy import ISODENSE_DELTA_HU
from models.phantom_profiles import (
    CT_REALISTIC,
    CT_VARIED,
    MR_BRATS_VARIED,
    MR_THICK,
    MR_VARIED,
)
from models.phantom_variation import Variation, blur
from models.phantoms import (
    CT_DEFAULT,
    CT_FINE,
    MR_BRATS,
    MR_DEFAULT,
    ContrastPhase,
    LesionDistribution,
    MRSequence,
    Phantom,
    SiteProfile,
    Tissue,
    abdominal_ct_phantom,
    brain_mr_phantom,
    generate_phantom,
)
from tests.morphology import erode

# Coarse grids that hold the whole patient (tests stay fast) ...
CT = SiteProfile(name="ct_test", spacing_mm=(5.0, 4.0, 4.0), matrix=(56, 100, 100), seed=7)
MR = SiteProfile(
    name="mr_test",
    spacing_mm=(3.0, 2.5, 2.5),
    matrix=(64, 88, 88),
    noise_sigma=0.0,
    lesions=LesionDistribution(15.0, 45.0, 1, 1),
    seed=7,
)
# ... and a fine grid around the liver only, for small lesions and thin vessels.
LIVER_FINE = SiteProfile(
    name="liver_fine",
    spacing_mm=(2.0, 1.5, 1.5),
    matrix=(80, 120, 140),
    centre_offset_mm=(-35.0, 0.0, 25.0),
    noise_sigma=0.0,
    seed=11,
)


def _mean(phantom: Phantom, mask: np.ndarray, channel: int | None = None) -> float:
    image = phantom.image if channel is None else phantom.image[channel]
    return float(image[mask].astype(float).mean())


# --- the existing profiles are unchanged ---------------------------------------------------


# Label voxel counts, image mean/std and lesion diameters of case 3 of each shipped default
# profile on a coarse grid, recorded before variation and detailed anatomy existed. Any
# extra random draw would change the patient (and these numbers) completely.
@pytest.mark.parametrize(
    ("kind", "profile", "counts", "mean", "std", "diameters"),
    [
        (
            "ct_abdomen",
            replace(CT_DEFAULT, spacing_mm=(5.0, 4.0, 4.0), matrix=(56, 100, 100)),
            [543119, 16426, 455],
            -634.641,
            491.828,
            [22.3803, 38.3458, 5.574],
        ),
        (
            "mr_t1c",
            replace(MR_DEFAULT, spacing_mm=(3.0, 2.5, 2.5), matrix=(64, 88, 88)),
            [491987, 3629],
            232.25,
            370.333,
            [19.3218],
        ),
        (
            "mr_brats",
            replace(MR_BRATS, spacing_mm=(4.0, 4.0, 4.0), matrix=(40, 56, 48)),
            [106462, 13, 1002, 43],
            152.558,
            345.318,
            [19.3218],
        ),
    ],
)
def test_default_profiles_make_the_phantoms_they_made_before(
    kind: str,
    profile: SiteProfile,
    counts: list[int],
    mean: float,
    std: float,
    diameters: list[float],
) -> None:
    assert profile.variation == Variation() and not profile.detailed_anatomy
    phantom = generate_phantom(kind, profile, 3)
    got = np.bincount(phantom.labels.ravel(), minlength=len(counts)).tolist()
    assert np.allclose(got, counts, rtol=2e-3, atol=3)
    assert float(phantom.image.astype(np.float64).mean()) == pytest.approx(mean, abs=0.05)
    assert float(phantom.image.std()) == pytest.approx(std, abs=0.05)
    assert [lesion.diameter_mm for lesion in phantom.lesions] == pytest.approx(diameters, abs=1e-3)
    assert not any(lesion.isodense for lesion in phantom.lesions)


def test_the_default_variation_draws_nothing() -> None:
    assert not Variation().random
    assert Variation(slice_samples=3).random is False  # a slice profile is not random
    for on in (
        Variation(tissue_hu=1.0),
        Variation(tissue_gain=0.1),
        Variation(bias=1.0),
        Variation(psf_fwhm_mm=(0.0, 1.0)),
        Variation(slice_fwhm_mm=(1.0, 2.0)),
        Variation(deform_mm=1.0),
        Variation(noise_gain=(0.9, 1.1)),
    ):
        assert on.random


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tissue_hu": -1.0}, "tissue_hu"),
        ({"tissue_gain": 1.0}, "tissue_gain"),
        ({"bias": -0.1}, "bias"),
        ({"psf_fwhm_mm": (2.0, 1.0)}, "psf_fwhm_mm"),
        ({"slice_fwhm_mm": (-1.0, 1.0)}, "slice_fwhm_mm"),
        ({"noise_gain": (1.2, 1.1)}, "noise_gain"),
        ({"deform_mm": 20.0, "deform_wavelength_mm": (60.0, 100.0)}, "deform_mm"),
        ({"deform_wavelength_mm": (0.0, 10.0)}, "deform_wavelength_mm"),
        ({"slice_samples": 2}, "slice_samples"),
    ],
)
def test_variation_refuses_bad_ranges_naming_the_field(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        Variation(**kwargs)  # type: ignore[arg-type]


def test_profile_and_lesion_distribution_validate_the_new_fields() -> None:
    with pytest.raises(ValueError, match="isodense_fraction"):
        LesionDistribution(isodense_fraction=1.5)
    with pytest.raises(ValueError, match="variation"):
        SiteProfile(variation=0.5)  # type: ignore[arg-type]


# --- determinism --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "profile"),
    [
        ("ct_abdomen", replace(CT_VARIED, spacing_mm=CT.spacing_mm, matrix=CT.matrix)),
        ("mr_t1c", replace(MR_VARIED, spacing_mm=MR.spacing_mm, matrix=MR.matrix)),
        ("mr_brats", replace(MR_BRATS_VARIED, spacing_mm=(4.0, 4.0, 4.0), matrix=(40, 56, 48))),
    ],
)
def test_same_profile_seed_and_case_give_the_identical_phantom(
    kind: str, profile: SiteProfile
) -> None:
    a, b = generate_phantom(kind, profile, 2), generate_phantom(kind, profile, 2)
    other = generate_phantom(kind, profile, 3)
    for name in ("image", "labels", "tissues", "lesion_map"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.image, other.image)
    assert a.lesions == b.lesions


# --- each randomisation, on and off ---------------------------------------------------------


def test_tissue_intensity_varies_across_cases_and_keeps_the_anatomy() -> None:
    quiet = replace(CT, noise_sigma=0.0)
    varied = replace(quiet, variation=Variation(tissue_hu=30.0))
    shifts = []
    for case in range(4):
        base, shifted = (abdominal_ct_phantom(p, p.rng(case)) for p in (quiet, varied))
        assert np.array_equal(base.labels, shifted.labels)  # drawn after the anatomy
        liver = base.tissues == Tissue.LIVER
        shifts.append(_mean(shifted, liver) - _mean(base, liver))
    assert max(abs(s) for s in shifts) <= 30.5
    assert np.ptp(shifts) > 10.0  # another shift in each case


def test_mr_tissue_gain_varies_the_contrast() -> None:
    varied = replace(MR, variation=Variation(tissue_gain=0.2))
    ratios = []
    for case in range(4):
        base = brain_mr_phantom(MR, MR.rng(case))
        gained = brain_mr_phantom(varied, varied.rng(case))
        assert np.array_equal(base.labels, gained.labels)
        wm, gm = (base.tissues == t for t in (Tissue.WHITE_MATTER, Tissue.GREY_MATTER))
        ratios.append(_mean(gained, wm) / _mean(gained, gm))
    assert np.ptp(ratios) > 0.05


def test_bias_field_is_smooth_and_bounded() -> None:
    quiet = replace(CT, noise_sigma=0.0)
    biased_profile = replace(quiet, variation=Variation(bias=40.0))
    for case in range(3):
        unbiased = abdominal_ct_phantom(quiet, quiet.rng(case))
        biased = abdominal_ct_phantom(biased_profile, biased_profile.rng(case))
        assert np.array_equal(unbiased.labels, biased.labels)
        body = unbiased.masks["body"] & (unbiased.image > -1000) & (unbiased.image < 3000)
        diff = np.where(body, biased.image.astype(float) - unbiased.image, np.nan)
        assert np.nanmax(np.abs(diff)) <= 41.0
        assert np.nanmax(diff) - np.nanmin(diff) > 1.0
        # smooth: neighbouring voxels differ by little (rounding to whole HU aside)
        assert np.nanmax(np.abs(np.diff(diff, axis=2))) <= 3.0


def test_blur_softens_edges_and_keeps_the_truth() -> None:
    quiet = replace(CT, noise_sigma=0.0)
    sharp = abdominal_ct_phantom(quiet, quiet.rng(0))
    soft_profile = replace(quiet, variation=Variation(psf_fwhm_mm=(8.0, 8.0)))
    soft = abdominal_ct_phantom(soft_profile, soft_profile.rng(0))
    assert np.array_equal(sharp.labels, soft.labels)
    # the steepest steps (organ and body edges) are less steep
    edge = [
        np.percentile(np.abs(np.diff(p.image.astype(float), axis=2)), 99.5) for p in (sharp, soft)
    ]
    assert edge[1] < 0.7 * edge[0]
    # the blur keeps a constant image constant and the mean of a periodic one
    flat = np.full((5, 9, 9), 7.0, dtype=np.float32)
    assert np.allclose(blur(flat, (3.0, 3.0, 3.0)), 7.0)


def test_noise_gain_scales_the_noise() -> None:
    quiet, noisy = replace(CT, noise_sigma=0.0), replace(CT, noise_sigma=20.0)
    loud = replace(noisy, variation=Variation(noise_gain=(2.0, 2.0)))
    base = abdominal_ct_phantom(quiet, quiet.rng(0))
    body = base.masks["body"] & (base.image > -900) & (base.image < 1500)
    sigma = [
        float((abdominal_ct_phantom(p, p.rng(0)).image - base.image.astype(float))[body].std())
        for p in (noisy, loud)
    ]
    assert sigma[1] == pytest.approx(2.0 * sigma[0], rel=0.1)


def test_deformation_bends_organs_and_keeps_the_truth_consistent() -> None:
    bent = replace(CT, variation=Variation(deform_mm=8.0, deform_wavelength_mm=(110.0, 160.0)))
    for case in range(3):
        plain = abdominal_ct_phantom(CT, CT.rng(case))
        phantom = abdominal_ct_phantom(bent, bent.rng(case))
        assert not np.array_equal(plain.labels, phantom.labels)
        # about the same liver, moved and bent
        assert phantom.volume_ml(1) == pytest.approx(plain.volume_ml(1), rel=0.15)
        _assert_ct_truth_consistent(phantom)


def _assert_ct_truth_consistent(phantom: Phantom) -> None:
    assert set(np.unique(phantom.labels).tolist()) <= {0, 1, 2}
    tumour = phantom.labels == 2
    assert np.array_equal(tumour, phantom.lesion_map > 0)
    assert np.isin(
        phantom.tissues[tumour],
        [Tissue.TUMOUR, Tissue.TUMOUR_NECROSIS, Tissue.CALCIFICATION],
    ).all()
    liver = phantom.labels == 1
    assert np.isin(phantom.tissues[liver], [Tissue.LIVER, Tissue.HEPATIC_VESSEL]).all()
    for k, lesion in enumerate(phantom.lesions, start=1):
        own = phantom.lesion_map == k
        assert lesion.voxels == int(np.count_nonzero(own))
        if not own.any():
            continue
        # each lesion lies in the liver: most voxels around it are liver or tumour
        ring = own.copy()
        for axis in range(3):
            ring |= np.roll(own, 1, axis) | np.roll(own, -1, axis)
        ring &= ~own
        assert np.isin(phantom.labels[ring], [1, 2]).mean() > 0.5


# --- detailed anatomy: CT --------------------------------------------------------------------


def test_liver_vessel_tree_enhances_with_the_phase() -> None:
    plain = LIVER_FINE
    detailed = replace(LIVER_FINE, detailed_anatomy=True)
    vessels = {}
    for profile in (plain, detailed):
        phantom = abdominal_ct_phantom(profile, profile.rng(0))
        vessel = phantom.tissues == Tissue.HEPATIC_VESSEL
        assert (phantom.labels[vessel] == 1).all()  # part of the liver label
        vessels[profile.detailed_anatomy] = int(vessel.sum())
    assert vessels[True] > 1.3 * vessels[False]
    means = {}
    for phase in (ContrastPhase.NATIVE, ContrastPhase.PORTAL_VENOUS):
        profile = replace(detailed, contrast_phase=phase)
        phantom = abdominal_ct_phantom(profile, profile.rng(0))
        vessel = phantom.tissues == Tissue.HEPATIC_VESSEL
        liver = phantom.tissues == Tissue.LIVER
        means[phase] = _mean(phantom, vessel) - _mean(phantom, liver)
        _assert_ct_truth_consistent(phantom)
    assert means[ContrastPhase.PORTAL_VENOUS] > 25.0  # enhancing tubes
    assert means[ContrastPhase.NATIVE] < 0.0  # blood darker than unenhanced liver


def test_lesions_from_4_mm_appear() -> None:
    small = replace(LIVER_FINE, detailed_anatomy=True, lesions=LesionDistribution(4.0, 5.0, 4, 6))
    found = []
    for case in range(2):
        phantom = abdominal_ct_phantom(small, small.rng(case))
        _assert_ct_truth_consistent(phantom)
        found += [lesion for lesion in phantom.lesions if lesion.voxels > 0]
    assert any(lesion.diameter_mm < 4.5 for lesion in found)
    assert min(lesion.diameter_mm for lesion in found) >= 4.0
    # a 4-5 mm lesion is a handful of 2 x 1.5 x 1.5 mm voxels, not one
    assert np.median([lesion.voxels for lesion in found]) >= 5


def test_near_isodense_lesions_are_a_few_hu_from_the_liver() -> None:
    iso = replace(LIVER_FINE, lesions=LesionDistribution(12.0, 25.0, 2, 3, isodense_fraction=1.0))
    plain = replace(iso, lesions=replace(iso.lesions, isodense_fraction=0.0))
    for case in range(2):
        phantom = abdominal_ct_phantom(iso, iso.rng(case))
        _assert_ct_truth_consistent(phantom)
        liver = _mean(phantom, phantom.tissues == Tissue.LIVER)
        assert phantom.lesions and all(lesion.isodense for lesion in phantom.lesions)
        for k, _lesion in enumerate(phantom.lesions, start=1):
            assert abs(_mean(phantom, phantom.lesion_map == k) - liver) < ISODENSE_DELTA_HU[1] + 4
        ordinary = abdominal_ct_phantom(plain, plain.rng(case))
        liver = _mean(ordinary, ordinary.tissues == Tissue.LIVER)
        assert not any(lesion.isodense for lesion in ordinary.lesions)
        contrast = [
            abs(_mean(ordinary, ordinary.lesion_map == k) - liver)
            for k in range(1, len(ordinary.lesions) + 1)
        ]
        assert max(contrast) > 15.0


def test_textured_lesions_are_heterogeneous() -> None:
    lesions = LesionDistribution(20.0, 30.0, 2, 3)
    spread = {}
    for detailed in (False, True):
        profile = replace(LIVER_FINE, lesions=lesions, detailed_anatomy=detailed)
        values = []
        for case in range(2):
            phantom = abdominal_ct_phantom(profile, profile.rng(case))
            for k in range(1, len(phantom.lesions) + 1):
                inner = erode((phantom.lesion_map == k) & (phantom.tissues == Tissue.TUMOUR), 2)
                if inner.sum() > 20:  # the interior, clear of the rim
                    values.append(float(phantom.image[inner].std()))
        spread[detailed] = float(np.mean(values))
    assert spread[True] > spread[False] + 2.0


# --- detailed anatomy: MR --------------------------------------------------------------------


def test_scalp_fat_marrow_dura_and_vessels() -> None:
    detailed = replace(MR, detailed_anatomy=True)
    plain_t1 = brain_mr_phantom(MR, MR.rng(0), MRSequence.T1)
    assert not np.isin(
        plain_t1.tissues, [Tissue.SCALP_FAT, Tissue.DURA, Tissue.VESSEL, Tissue.MARROW]
    ).any()
    t1 = brain_mr_phantom(detailed, detailed.rng(0), MRSequence.T1)
    t1c = brain_mr_phantom(detailed, detailed.rng(0), MRSequence.T1C)
    assert np.array_equal(t1.tissues, t1c.tissues)
    tissue = {t: t1.tissues == t for t in Tissue}
    for t in (Tissue.SCALP_FAT, Tissue.MARROW, Tissue.DURA, Tissue.VESSEL):
        assert tissue[t].sum() > 20, t
    wm = tissue[Tissue.WHITE_MATTER]
    for phantom in (t1, t1c):  # fat is bright with and without gadolinium
        assert _mean(phantom, tissue[Tissue.SCALP_FAT]) > 1.2 * _mean(phantom, wm)
        assert _mean(phantom, tissue[Tissue.MARROW]) > _mean(phantom, tissue[Tissue.SKULL]) + 300
    for t in (Tissue.DURA, Tissue.VESSEL):  # enhance on T1C only
        assert _mean(t1c, tissue[t]) > _mean(t1, tissue[t]) + 200, t
    # the glioma and the brain are where they were: the head's detail is outside them
    assert not (tissue[Tissue.SCALP_FAT] & t1.masks["brain"]).any()
    glioma = [Tissue.OEDEMA, Tissue.ENHANCING, Tissue.NECROTIC]
    assert np.array_equal(t1.labels > 0, np.isin(t1.tissues, glioma))


# --- named profiles ------------------------------------------------------------------------


def test_named_profiles_are_listed_and_documented() -> None:
    for task, names in {
        "liver_ct": ("ct_default", "ct_fine", "ct_varied", "ct_realistic"),
        "glioma_mr": ("mr_default", "mr_varied", "mr_thick"),
        "glioma_brats": ("mr_brats", "mr_brats_varied"),
    }.items():
        assert tuple(p.name for p in PROFILES[task]) == names  # type: ignore[index]
        for name in names:
            assert named_profile(task, name).name == name
    assert CT_VARIED.spacing_mm == CT_FINE.spacing_mm and CT_VARIED.matrix == CT_FINE.matrix
    assert CT_REALISTIC.lesions.min_diameter_mm == 4.0 and CT_REALISTIC.lesions.isodense_fraction
    for profile in (CT_VARIED, CT_REALISTIC, MR_VARIED, MR_THICK, MR_BRATS_VARIED):
        assert profile.detailed_anatomy
    for profile in (CT_VARIED, MR_VARIED, MR_BRATS_VARIED):
        assert profile.variation.random


def test_thick_slice_profile() -> None:
    assert 5.0 <= MR_THICK.spacing_mm[0] <= 7.0
    assert MR_THICK.variation.slice_samples > 1
    small = replace(MR_THICK, matrix=(32, 80, 80), spacing_mm=(6.0, 2.5, 2.5))
    thick = generate_phantom("mr_t1c", small, 0)
    assert thick.spacing_mm[0] == pytest.approx(6.0)
    thin = replace(small, variation=replace(small.variation, slice_samples=1))
    one = generate_phantom("mr_t1c", thin, 0)
    assert np.array_equal(one.labels, thick.labels)  # truth at the slice centre
    # averaged over the slice: changes along the slice axis are smoother
    steps = [float(np.abs(np.diff(p.image.astype(float), axis=0)).mean()) for p in (one, thick)]
    assert steps[1] < steps[0]
