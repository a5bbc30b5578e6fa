"""Phantoms written as DICOM series read back to the same array and affine; truth files."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.phantom_series import (
    TRUTH_FILENAME,
    canonical_slice_order,
    geometry_from_affine,
    load_truth,
    save_truth,
    write_phantom_series,
)
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity
from dicom_bridge.volume import load_series_volume
from models.phantoms import (
    AXIAL,
    CORONAL,
    MRSequence,
    Phantom,
    SiteProfile,
    abdominal_ct_phantom,
    brain_mr_phantom,
    oblique,
)

# Few, coarse slices: the geometry is what is under test, not the anatomy.
CT = SiteProfile(spacing_mm=(10.0, 6.0, 6.0), matrix=(18, 56, 56), seed=3)
MR = SiteProfile(spacing_mm=(8.0, 4.0, 4.0), matrix=(16, 48, 48), noise_sigma=15.0, seed=3)
TILTED = oblique(AXIAL, about_lr_deg=17.0, about_ap_deg=-9.0, about_si_deg=23.0)


def _flipped(affine: np.ndarray, slices: int) -> np.ndarray:
    """The affine of the same grid indexed from its last slice back (against the normal)."""
    out = affine.copy()
    out[:3, 3] = (affine @ np.array([slices - 1, 0, 0, 1.0]))[:3]
    out[:3, 0] *= -1
    return out


def _write(phantom: Phantom, directory: Path, **kwargs: object) -> list[Path]:
    return write_phantom_series(
        directory,
        phantom.image,
        phantom.affine_lps,
        modality=phantom.modality,
        series_description=phantom.series_description,
        body_part=phantom.body_part,
        reverse_slice_order=phantom.profile.reverse_slice_order,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "profile",
    [
        CT,
        replace(CT, orientation=TILTED),
        replace(CT, orientation=CORONAL, reverse_slice_order=True),
        replace(CT, orientation=TILTED, reverse_slice_order=True, intensity_offset=-30.0),
    ],
    ids=["axial", "oblique", "coronal-reversed", "oblique-reversed"],
)
def test_ct_round_trip(tmp_path: Path, profile: SiteProfile) -> None:
    phantom = abdominal_ct_phantom(profile)
    paths = _write(phantom, tmp_path / "series")
    assert len(paths) == profile.matrix[0]
    volume = load_series_volume(paths)
    assert volume.modality == "CT"
    assert np.array_equal(volume.array, phantom.image)  # HU, voxel for voxel
    assert np.allclose(volume.affine, phantom.affine_lps)
    assert volume.spacing == pytest.approx(profile.spacing_mm)

    first, last = dcmread(paths[0]), dcmread(paths[-1])
    assert (first.InstanceNumber, last.InstanceNumber) == (1, len(paths))
    normal = profile.normal
    along = [float(np.dot(ds.ImagePositionPatient, normal)) for ds in (first, last)]
    assert (along[0] > along[1]) == profile.reverse_slice_order  # file order vs normal
    assert first.SeriesDescription == "CT ABDOMEN PORTAL"
    assert first.BodyPartExamined == "ABDOMEN"
    assert first.SeriesInstanceUID == last.SeriesInstanceUID


@pytest.mark.parametrize("sequence", list(MRSequence))
def test_mr_round_trip_oblique(tmp_path: Path, sequence: MRSequence) -> None:
    profile = replace(MR, orientation=TILTED, intensity_scale=2.0, bias_field=0.3)
    phantom = brain_mr_phantom(profile, sequence=sequence)
    paths = _write(phantom, tmp_path / "mr")
    volume = load_series_volume(paths)
    assert volume.modality == "MR"
    assert np.array_equal(volume.array, phantom.image)
    assert np.allclose(volume.affine, phantom.affine_lps)
    ds = dcmread(paths[0])
    assert ds.SeriesDescription == phantom.series_description
    assert ds.BodyPartExamined == "HEAD"
    assert str(ds.PatientName) == "PHANTOM^MR"


def test_reversed_slice_axis_is_written_in_canonical_order(tmp_path: Path) -> None:
    phantom = abdominal_ct_phantom(replace(CT, orientation=TILTED))
    flipped_image = phantom.image[::-1]
    flipped_affine = _flipped(phantom.affine_lps, CT.matrix[0])
    # the same voxels in patient space, indexed against the normal
    corner = np.array([2.0, 5.0, 7.0, 1.0])
    flipped_corner = np.array([CT.matrix[0] - 3.0, 5.0, 7.0, 1.0])
    assert np.allclose(phantom.affine_lps @ corner, flipped_affine @ flipped_corner)

    image, affine = canonical_slice_order(flipped_image, flipped_affine)
    assert np.array_equal(image, phantom.image) and np.allclose(affine, phantom.affine_lps)
    paths = write_phantom_series(tmp_path, flipped_image, flipped_affine, modality="CT")
    volume = load_series_volume(paths)
    assert np.array_equal(volume.array, phantom.image)
    assert np.allclose(volume.affine, phantom.affine_lps)


def test_geometry_from_affine_inverts_series_geometry() -> None:
    geometry = SeriesGeometry(
        slices=5,
        rows=7,
        columns=9,
        pixel_spacing=(0.7, 0.9),
        slice_spacing=3.0,
        origin=(-10.0, 20.0, -30.0),
        row_direction=tuple(TILTED[:3]),  # type: ignore[arg-type]
        column_direction=tuple(TILTED[3:]),  # type: ignore[arg-type]
    )
    derived = geometry_from_affine((5, 7, 9), geometry.affine())
    assert np.allclose(derived.affine(), geometry.affine())
    assert derived.pixel_spacing == pytest.approx(geometry.pixel_spacing)
    assert derived.slice_spacing == pytest.approx(geometry.slice_spacing)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    image = np.zeros((3, 4, 5), dtype=np.int16)
    sheared = np.eye(4)
    sheared[1, 0] = 0.3  # slices step sideways: a gantry tilt
    with pytest.raises(ValueError, match="orthogonal"):
        write_phantom_series(tmp_path, image, sheared, modality="CT")
    with pytest.raises(ValueError, match="CT or MR"):
        write_phantom_series(tmp_path, image, np.eye(4), modality="US")
    with pytest.raises(ValueError, match="int16"):
        write_phantom_series(tmp_path, image.astype(np.int32) + 40000, np.eye(4), modality="CT")
    with pytest.raises(ValueError, match="whole numbers"):
        write_phantom_series(tmp_path, image + 0.5, np.eye(4), modality="CT")
    with pytest.raises(ValueError, match="unknown DICOM keywords"):
        write_phantom_series(
            tmp_path, image, np.eye(4), modality="CT", extra_attributes={"NotAKeyword": 1}
        )
    with pytest.raises(ValueError, match="reorder"):
        # rows along +y and columns along +z: the normal is -x, the slices run along +x
        geometry_from_affine(image.shape, np.eye(4))
    assert not list(tmp_path.iterdir())  # nothing written


def test_identity_and_extra_attributes(tmp_path: Path) -> None:
    phantom = brain_mr_phantom(MR, sequence="FLAIR")
    identity = SeriesIdentity(patient_name="TEST^FLAIR", patient_id="T-1", series_number=4)
    paths = write_phantom_series(
        tmp_path,
        phantom.image,
        phantom.affine_lps,
        modality="MR",
        identity=identity,
        series_description="FLAIR AX",
        extra_attributes={"ScanningSequence": "IR", "InversionTime": "2500"},
    )
    for path in (paths[0], paths[-1]):
        ds = dcmread(path)
        assert str(ds.PatientName) == "TEST^FLAIR" and ds.SeriesNumber == 4
        assert ds.SeriesDescription == "FLAIR AX"
        assert ds.BodyPartExamined == identity.body_part  # not overridden
        assert ds.ScanningSequence == "IR" and float(ds.InversionTime) == 2500.0
        assert ds.StudyInstanceUID == identity.study_uid


def test_truth_round_trip(tmp_path: Path) -> None:
    phantom = brain_mr_phantom(MR)
    masks = {name: phantom.masks[name] for name in ("oedema", "enhancing", "necrotic")}
    metadata = {"lesions": [{"centre_lps": list(les.centre_lps)} for les in phantom.lesions]}
    path = save_truth(
        tmp_path / TRUTH_FILENAME,
        phantom.labels,
        phantom.affine_lps,
        masks=masks,
        metadata=metadata,
    )
    truth = load_truth(path)
    assert truth.labels.dtype == np.uint8
    assert np.array_equal(truth.labels, phantom.labels)
    assert np.allclose(truth.affine, phantom.affine_lps)
    assert set(truth.masks) == set(masks)
    for name, mask in masks.items():
        assert np.array_equal(truth.masks[name], mask)
    assert truth.metadata == metadata
    with pytest.raises(ValueError, match=r"\.npz"):
        save_truth(tmp_path / "truth.txt", phantom.labels, phantom.affine_lps)


def test_truth_is_stored_on_the_grid_the_series_loads_to(tmp_path: Path) -> None:
    phantom = abdominal_ct_phantom(CT)
    flipped_affine = _flipped(phantom.affine_lps, CT.matrix[0])
    flipped_labels = phantom.labels[::-1]
    save_truth(
        tmp_path / "t.npz",
        flipped_labels,
        flipped_affine,
        masks={"body": phantom.masks["body"][::-1]},
    )
    truth = load_truth(tmp_path / "t.npz")
    paths = write_phantom_series(tmp_path / "s", phantom.image[::-1], flipped_affine, modality="CT")
    volume = load_series_volume(paths)
    assert np.allclose(truth.affine, volume.affine)
    assert np.array_equal(truth.labels, phantom.labels)
    assert np.array_equal(truth.masks["body"], phantom.masks["body"])
