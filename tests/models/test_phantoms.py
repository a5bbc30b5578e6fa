"""Phantom generator: known truth, patient-space anatomy, site/scanner parameters."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from models.phantoms import (
    AXIAL,
    CORONAL,
    CT_LABELS,
    MR_LABELS,
    SAGITTAL,
    SITE_PRESETS,
    ContrastPhase,
    LesionDistribution,
    LesionKind,
    MRSequence,
    Orientation,
    Phantom,
    PhantomKind,
    SiteProfile,
    Tissue,
    abdominal_ct_phantom,
    brain_mr_phantom,
    generate_phantom,
    oblique,
    rotation_matrix,
)

# Coarse grids that still hold the whole patient, so that tests stay fast.
CT = SiteProfile(name="ct_test", spacing_mm=(5.0, 4.0, 4.0), matrix=(56, 100, 100), seed=7)
MR = SiteProfile(
    name="mr_test",
    spacing_mm=(3.0, 2.5, 2.5),
    matrix=(64, 88, 88),
    noise_sigma=15.0,
    lesions=LesionDistribution(15.0, 45.0, 1, 1),
    bias_field=0.15,
    seed=7,
)
TILTED = oblique(AXIAL, about_lr_deg=17.0, about_ap_deg=-9.0, about_si_deg=23.0)


def _centroid_lps(phantom: Phantom, mask: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask).mean(axis=0)
    return (phantom.affine_lps @ np.append(index, 1.0))[:3]


def _lps_of_voxels(phantom: Phantom, mask: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask).astype(float)
    return index @ phantom.affine_lps[:3, :3].T + phantom.affine_lps[:3, 3]


def _index_of(phantom: Phantom, point_lps: tuple[float, float, float]) -> tuple[int, int, int]:
    index = np.linalg.inv(phantom.affine_lps) @ np.append(point_lps, 1.0)
    s, r, c = (round(float(v)) for v in index[:3])
    return s, r, c


def _neighbours(mask: np.ndarray) -> np.ndarray:
    """Voxels 6-adjacent to ``mask`` but not in it."""
    grown = mask.copy()
    for axis in range(3):
        for step in (1, -1):
            grown |= np.roll(mask, step, axis=axis)
    return grown & ~mask


@pytest.fixture(scope="module")
def ct() -> Phantom:
    return abdominal_ct_phantom(CT, CT.rng(0))


@pytest.fixture(scope="module")
def t1c() -> Phantom:
    return brain_mr_phantom(MR, MR.rng(0), MRSequence.T1C)


@pytest.fixture(scope="module")
def flair() -> Phantom:
    return brain_mr_phantom(MR, MR.rng(0), "FLAIR")


# --- geometry ------------------------------------------------------------------------------


def test_affine_follows_the_dicom_bridge_convention() -> None:
    """[slice, row, col, 1] -> LPS; columns along the row cosine, slices along row x col."""
    profile = SiteProfile(spacing_mm=(3.0, 2.0, 1.5), matrix=(10, 20, 30), orientation=TILTED)
    affine = profile.affine()
    row, col = np.array(TILTED[:3]), np.array(TILTED[3:])
    assert np.allclose(affine[:3, 2], row * 1.5)
    assert np.allclose(affine[:3, 1], col * 2.0)
    assert np.allclose(affine[:3, 0], np.cross(row, col) * 3.0)
    assert np.allclose(affine[3], (0, 0, 0, 1))
    centre = affine @ np.array([4.5, 9.5, 14.5, 1.0])
    assert np.allclose(centre[:3], 0.0)  # the grid is centred on the patient
    axial = SiteProfile().affine()
    assert axial[2, 0] > 0  # axial slices run feet -> head
    assert np.allclose(np.cross(CORONAL[:3], CORONAL[3:]), (0, 1, 0))  # anterior -> posterior
    assert np.allclose(np.cross(SAGITTAL[:3], SAGITTAL[3:]), (-1, 0, 0))  # left -> right


def test_oblique_orientation_is_orthonormal() -> None:
    row, col = np.array(TILTED[:3]), np.array(TILTED[3:])
    assert math.isclose(float(np.linalg.norm(row)), 1.0)
    assert math.isclose(float(np.linalg.norm(col)), 1.0)
    assert abs(float(row @ col)) < 1e-12
    rot = rotation_matrix(10.0, 20.0, 30.0)
    assert np.allclose(rot @ rot.T, np.eye(3))


def test_profile_validation() -> None:
    with pytest.raises(ValueError):
        SiteProfile(spacing_mm=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError):
        SiteProfile(matrix=(1, 10, 10))
    with pytest.raises(ValueError):
        SiteProfile(orientation=(1.0, 0.0, 0.0, 0.6, 0.8, 0.0))  # not orthogonal
    with pytest.raises(ValueError):
        SiteProfile(bias_field=1.5)
    with pytest.raises(ValueError):
        LesionDistribution(20.0, 10.0)
    with pytest.raises(ValueError):
        LesionDistribution(5.0, 10.0, 3, 2)
    assert SiteProfile(contrast_phase="arterial").contrast_phase is ContrastPhase.ARTERIAL  # type: ignore[arg-type]


# --- CT -----------------------------------------------------------------------------------


def test_same_seed_same_phantom(ct: Phantom) -> None:
    again = abdominal_ct_phantom(CT, CT.rng(0))
    assert np.array_equal(again.image, ct.image)
    assert np.array_equal(again.labels, ct.labels)
    assert again.lesions == ct.lesions
    other = abdominal_ct_phantom(CT, CT.rng(1))
    assert not np.array_equal(other.labels, ct.labels)
    assert np.array_equal(generate_phantom(PhantomKind.CT_ABDOMEN, CT, case=0).image, ct.image)


def test_ct_arrays_and_labels(ct: Phantom) -> None:
    assert ct.image.dtype == np.int16 and ct.labels.dtype == np.uint8
    assert ct.image.shape == ct.labels.shape == ct.tissues.shape == CT.matrix
    assert set(np.unique(ct.labels).tolist()) == {0, 1, 2}
    assert ct.label_names == CT_LABELS and ct.modality == "CT"
    assert ct.image.min() >= -1024 and ct.image.max() <= 3071
    assert ct.image[0, 0, 0] < -900  # air outside the body
    assert ct.series_description == "CT ABDOMEN PORTAL" and ct.body_part == "ABDOMEN"


@pytest.mark.parametrize("case", [0, 1, 2])
def test_adult_organ_volumes(case: int) -> None:
    phantom = abdominal_ct_phantom(CT, CT.rng(case))
    liver_ml = phantom.volume_ml(1) + phantom.volume_ml(2)
    assert 1000 <= liver_ml <= 2000
    ml = phantom.voxel_volume_ml
    spleen = np.count_nonzero(phantom.tissues == Tissue.SPLEEN) * ml
    assert 80 <= spleen <= 600
    assert 0.05 < phantom.masks["body"].mean() < 0.9


def test_tumours_lie_inside_the_liver(ct: Phantom) -> None:
    tumour = ct.labels == 2
    around = _neighbours(tumour)
    assert np.mean(ct.labels[around] >= 1) > 0.95  # surrounded by liver
    for case in range(4):
        phantom = abdominal_ct_phantom(CT, CT.rng(case))
        lo, hi = CT.lesions.min_diameter_mm, CT.lesions.max_diameter_mm
        assert CT.lesions.min_count <= len(phantom.lesions) <= CT.lesions.max_count
        for lesion in phantom.lesions:
            assert lesion.kind in (LesionKind.HYPOVASCULAR, LesionKind.HYPERVASCULAR)
            assert lo <= lesion.diameter_mm <= hi
            if lesion.diameter_mm >= 12.0:
                assert phantom.labels[_index_of(phantom, lesion.centre_lps)] == 2
            if lesion.diameter_mm >= 20.0:  # several voxels across: volume matches size
                assert lesion.equivalent_diameter_mm == pytest.approx(lesion.diameter_mm, rel=0.2)
        total = sum(lesion.voxels for lesion in phantom.lesions)
        assert total == np.count_nonzero(phantom.labels == 2)
        for k, lesion in enumerate(phantom.lesions, start=1):
            assert np.count_nonzero(phantom.lesion_map == k) == lesion.voxels
        assert np.array_equal(phantom.lesion_map > 0, phantom.labels == 2)


def test_small_lesion_site() -> None:
    profile = replace(CT, lesions=LesionDistribution(5.0, 10.0, 4, 6))
    phantom = abdominal_ct_phantom(profile, profile.rng(3))
    assert 4 <= len(phantom.lesions) <= 6
    assert all(5.0 <= lesion.diameter_mm <= 10.0 for lesion in phantom.lesions)


def test_lps_sidedness(ct: Phantom) -> None:
    """LPS +x is the patient's left: the liver lies at -x, the spleen at +x."""
    liver = _centroid_lps(ct, ct.labels >= 1)
    spleen = _centroid_lps(ct, ct.tissues == Tissue.SPLEEN)
    aorta = _centroid_lps(ct, ct.tissues == Tissue.AORTA)
    ivc = _centroid_lps(ct, ct.tissues == Tissue.IVC)
    canal = _centroid_lps(ct, ct.tissues == Tissue.CANAL)
    assert liver[0] < -30 and spleen[0] > 40
    assert aorta[0] > ivc[0]  # aorta left of the IVC
    assert canal[1] > aorta[1]  # spine posterior (+y) to the aorta
    kidneys = _lps_of_voxels(ct, np.isin(ct.tissues, (Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA)))
    right, left = kidneys[kidneys[:, 0] < 0], kidneys[kidneys[:, 0] > 0]
    assert len(right) > 0.3 * len(kidneys) and len(left) > 0.3 * len(kidneys)
    assert liver[2] > kidneys[:, 2].mean()  # liver above the kidneys (+z superior)
    # axial grid: column index runs along +x, so the liver is in the low columns
    assert (
        np.argwhere(ct.labels >= 1)[:, 2].mean()
        < np.argwhere(ct.tissues == Tissue.SPLEEN)[:, 2].mean()
    )


@pytest.mark.parametrize(
    "orientation", [TILTED, CORONAL, SAGITTAL], ids=["oblique", "coronal", "sagittal"]
)
def test_same_anatomy_on_any_grid(ct: Phantom, orientation: Orientation) -> None:
    profile = replace(
        CT, orientation=orientation, spacing_mm=(4.5, 3.6, 4.2), matrix=(90, 110, 100)
    )
    other = abdominal_ct_phantom(profile, profile.rng(0))
    assert other.lesions and len(other.lesions) == len(ct.lesions)
    for a, b in zip(other.lesions, ct.lesions, strict=True):
        assert np.allclose(a.centre_lps, b.centre_lps) and a.diameter_mm == b.diameter_mm
    voxel = max(CT.spacing_mm)
    for mask_a, mask_b in (
        (ct.labels >= 1, other.labels >= 1),
        (ct.labels == 2, other.labels == 2),
    ):
        shift = np.linalg.norm(_centroid_lps(ct, mask_a) - _centroid_lps(other, mask_b))
        assert shift < voxel
    assert other.volume_ml(1) == pytest.approx(ct.volume_ml(1), rel=0.03)
    spleen_a = _centroid_lps(ct, ct.tissues == Tissue.SPLEEN)
    spleen_b = _centroid_lps(other, other.tissues == Tissue.SPLEEN)
    assert np.linalg.norm(spleen_a - spleen_b) < voxel


def _mean_hu(phantom: Phantom, mask: np.ndarray) -> float:
    return float(phantom.image[mask].mean())


def _lesion_cores(phantom: Phantom) -> list[tuple[LesionKind, np.ndarray]]:
    """Viable tumour voxels within each lesion's nominal radius (necrosis excluded)."""
    points = _lps_of_voxels(phantom, np.ones(phantom.labels.shape, dtype=bool))
    out = []
    for lesion in phantom.lesions:
        if lesion.diameter_mm < 12.0:
            continue
        near = np.linalg.norm(points - np.asarray(lesion.centre_lps), axis=1)
        near = near.reshape(phantom.labels.shape) < lesion.diameter_mm / 2.0
        out.append((lesion.kind, near & (phantom.tissues == Tissue.TUMOUR)))
    return out


def test_contrast_phase_changes_enhancement_not_anatomy() -> None:
    quiet = replace(CT, noise_sigma=0.0, lesions=LesionDistribution(15.0, 30.0, 3, 4))
    for case in range(10):  # the first patient with both kinds of tumour
        portal = abdominal_ct_phantom(quiet, quiet.rng(case))
        cores = _lesion_cores(portal)
        if {kind for kind, _ in cores} == set(LesionKind) - {LesionKind.GLIOMA}:
            break
    else:
        pytest.fail("no phantom with both hypo- and hypervascular tumours in 10 cases")
    native, arterial = (
        abdominal_ct_phantom(replace(quiet, contrast_phase=phase), quiet.rng(case))
        for phase in (ContrastPhase.NATIVE, ContrastPhase.ARTERIAL)
    )
    for phantom in (native, arterial):
        assert np.array_equal(phantom.labels, portal.labels)
    liver = native.tissues == Tissue.LIVER
    aorta = native.tissues == Tissue.AORTA
    assert _mean_hu(native, liver) < _mean_hu(arterial, liver) < _mean_hu(portal, liver)
    assert 45 < _mean_hu(native, liver) < 75 and 85 < _mean_hu(portal, liver) < 140
    assert _mean_hu(arterial, aorta) > _mean_hu(portal, aorta) + 80 > _mean_hu(native, aorta) + 80
    liver_portal, liver_arterial = _mean_hu(portal, liver), _mean_hu(arterial, liver)
    for kind, core in cores:
        if kind == LesionKind.HYPOVASCULAR:
            assert _mean_hu(portal, core) < liver_portal - 25  # dark in portal venous
        else:
            assert _mean_hu(arterial, core) > liver_arterial + 25  # bright in arterial
            assert _mean_hu(portal, core) < liver_portal  # washout


def test_scanner_calibration_and_noise() -> None:
    quiet = replace(CT, noise_sigma=0.0)
    base = abdominal_ct_phantom(quiet, quiet.rng(0))
    body = base.masks["body"] & (base.image > -900) & (base.image < 1500)

    shifted = abdominal_ct_phantom(
        replace(quiet, intensity_scale=1.1, intensity_offset=25.0), quiet.rng(0)
    )
    expected = 1.1 * base.image[body].astype(float) + 25.0
    assert np.abs(shifted.image[body] - expected).max() <= 1.1

    noisy = abdominal_ct_phantom(replace(quiet, noise_sigma=20.0), quiet.rng(0))
    assert np.array_equal(noisy.labels, base.labels)  # noise is drawn after the anatomy
    noise = noisy.image.astype(float) - base.image
    assert np.std(noise[body]) == pytest.approx(20.0, rel=0.08)
    # reconstructed CT noise is correlated within the image plane, not across slices
    in_plane = np.corrcoef(noise[:, :, 1:][body[:, :, 1:]], noise[:, :, :-1][body[:, :, 1:]])[0, 1]
    across = np.corrcoef(noise[1:][body[1:]], noise[:-1][body[1:]])[0, 1]
    assert in_plane > 0.4 and abs(across) < 0.1


# --- MR -----------------------------------------------------------------------------------


def test_mr_arrays_and_labels(t1c: Phantom, flair: Phantom) -> None:
    assert t1c.image.dtype == np.int16 and t1c.labels.dtype == np.uint8
    assert set(np.unique(t1c.labels).tolist()) == {0, 1}
    assert t1c.label_names == MR_LABELS and t1c.modality == "MR"
    assert t1c.image.min() >= 0
    assert t1c.series_description == "T1 POST GD" and flair.series_description == "FLAIR"
    # one patient in both sequences: same truth, different contrast
    assert np.array_equal(t1c.labels, flair.labels)
    for name in ("brain", "oedema", "enhancing", "necrotic"):
        assert np.array_equal(t1c.masks[name], flair.masks[name])
    assert not np.array_equal(t1c.image, flair.image)


def test_glioma_structure(t1c: Phantom) -> None:
    oedema, enhancing, necrotic = (t1c.masks[k] for k in ("oedema", "enhancing", "necrotic"))
    whole = t1c.labels == 1
    assert np.array_equal(whole, oedema | enhancing | necrotic)
    assert not (oedema & enhancing).any() and not (enhancing & necrotic).any()
    assert not (whole & ~t1c.masks["brain"]).any()  # inside the brain
    assert oedema.sum() > enhancing.sum() > 0 and necrotic.sum() > 0
    core = enhancing | necrotic
    assert np.mean(oedema[_neighbours(core)] | core[_neighbours(core)]) > 0.85  # oedema around
    assert np.mean(enhancing[_neighbours(necrotic)]) > 0.9  # rim around necrosis
    (lesion,) = t1c.lesions
    assert lesion.kind == LesionKind.GLIOMA
    assert MR.lesions.min_diameter_mm <= lesion.diameter_mm <= MR.lesions.max_diameter_mm
    assert core[_index_of(t1c, lesion.centre_lps)]
    assert lesion.voxels == whole.sum()
    assert np.array_equal(t1c.lesion_map > 0, whole)
    assert abs(_centroid_lps(t1c, whole)[0]) > 8  # in a hemisphere, off the midline


def test_sequence_contrast(t1c: Phantom, flair: Phantom) -> None:
    def mean(phantom: Phantom, mask: np.ndarray) -> float:
        return float(phantom.image[mask].mean())

    wm = t1c.tissues == Tissue.WHITE_MATTER
    gm = t1c.tissues == Tissue.GREY_MATTER
    enhancing, necrotic, oedema = t1c.masks["enhancing"], t1c.masks["necrotic"], t1c.masks["oedema"]
    assert mean(t1c, enhancing) > 1.3 * mean(t1c, wm)  # bright rim after gadolinium
    assert mean(t1c, enhancing) > 2.0 * mean(t1c, necrotic)  # dark necrotic core
    assert mean(t1c, wm) > mean(t1c, gm)  # T1: white brighter than grey
    assert mean(flair, oedema) > 1.5 * mean(flair, wm)  # FLAIR: bright oedema
    assert mean(flair, oedema) > 1.3 * mean(flair, gm)
    ventricles = t1c.tissues == Tissue.VENTRICLE
    assert mean(flair, ventricles) < 0.3 * mean(flair, wm)  # fluid suppressed


def test_mr_anatomy_is_grid_independent(t1c: Phantom) -> None:
    profile = replace(MR, orientation=CORONAL, spacing_mm=(2.6, 3.0, 2.4), matrix=(84, 72, 88))
    coronal = brain_mr_phantom(profile, profile.rng(0))
    shift = _centroid_lps(coronal, coronal.labels == 1) - _centroid_lps(t1c, t1c.labels == 1)
    assert np.linalg.norm(shift) < max(MR.spacing_mm)
    assert coronal.volume_ml(1) == pytest.approx(t1c.volume_ml(1), rel=0.05)


def test_mr_scale_and_bias_field() -> None:
    flat = replace(MR, noise_sigma=0.0, bias_field=0.0)
    base = brain_mr_phantom(flat, flat.rng(2))
    wm = base.tissues == Tissue.WHITE_MATTER
    scaled = brain_mr_phantom(
        replace(flat, intensity_scale=2.0, intensity_offset=10.0), flat.rng(2)
    )
    assert np.abs(scaled.image[wm] - (2.0 * base.image[wm] + 10.0)).max() <= 1.5
    biased = brain_mr_phantom(replace(flat, bias_field=0.3), flat.rng(2))
    assert np.array_equal(biased.labels, base.labels)
    ratio = biased.image[wm] / base.image[wm].astype(float)
    assert ratio.max() / ratio.min() > 1.2  # a smooth multiplicative field
    assert ratio.min() > 0.6 and ratio.max() < 1.6
    noisy = brain_mr_phantom(replace(flat, noise_sigma=30.0), flat.rng(2))
    corners = np.zeros(base.labels.shape, dtype=bool)
    corners[:, :8, :8] = corners[:, -8:, -8:] = True
    air = corners & (base.image == 0)
    # Rician noise in the background: mean sigma * sqrt(pi / 2)
    assert noisy.image[air].mean() == pytest.approx(30.0 * math.sqrt(math.pi / 2), rel=0.1)


# --- presets ------------------------------------------------------------------------------


def test_site_presets_differ() -> None:
    assert len(SITE_PRESETS) >= 3
    cts = [h.ct for h in SITE_PRESETS.values()]
    mrs = [h.mr for h in SITE_PRESETS.values()]
    assert len({p.name for p in cts + mrs}) == 2 * len(SITE_PRESETS)
    assert len({p.seed for p in cts + mrs}) == 2 * len(SITE_PRESETS)
    assert len({p.contrast_phase for p in cts}) >= 2
    assert len({(p.intensity_scale, p.intensity_offset) for p in cts}) >= 3
    assert len({p.spacing_mm for p in cts}) >= 3
    assert len({p.noise_sigma for p in cts}) >= 3
    assert any(p.lesions.max_diameter_mm <= 15 for p in cts)  # a small-lesion site
    assert any(p.reverse_slice_order for p in cts)
    assert any(p.orientation != AXIAL for p in mrs)
    assert len({p.bias_field for p in mrs}) >= 3
    cases = sorted(h.cases for h in SITE_PRESETS.values())
    assert cases[0] * 3 <= cases[1]  # one site much smaller than the others


@pytest.mark.parametrize("site", sorted(SITE_PRESETS))
def test_each_preset_generates(site: str) -> None:
    hospital = SITE_PRESETS[site]
    # halve the matrix and double the spacing: same field of view, an eighth of the voxels
    ct_profile = replace(
        hospital.ct,
        matrix=tuple(max(2, n // 2) for n in hospital.ct.matrix),  # type: ignore[arg-type]
        spacing_mm=tuple(2 * s for s in hospital.ct.spacing_mm),  # type: ignore[arg-type]
    )
    phantom = abdominal_ct_phantom(ct_profile)
    assert 800 < phantom.volume_ml(1) + phantom.volume_ml(2) < 2200
    mr_profile = replace(
        hospital.mr,
        matrix=tuple(max(2, n // 2) for n in hospital.mr.matrix),  # type: ignore[arg-type]
        spacing_mm=tuple(2 * s for s in hospital.mr.spacing_mm),  # type: ignore[arg-type]
    )
    brain = brain_mr_phantom(mr_profile, sequence=MRSequence.FLAIR)
    assert brain.volume_ml(1) > 1.0
