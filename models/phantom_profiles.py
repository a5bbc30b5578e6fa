"""Phantom profiles that look more like patients: detailed anatomy and per-case variation.

The training profiles randomise widely what a model must not rely on (tissue
intensities, bias field, blur, slight deformation, noise); the evaluation profiles vary
moderately and add what real scans have and the plain phantoms lack (vessels, textured
and near-isodense lesions from 4 mm, scalp fat, skull marrow, enhancing dura, thick
slices). See ``docs/training.md`` for which profile to use when.

- :data:`CT_VARIED` (``ct_varied``) - liver CT training, ``ct_fine``'s grid;
- :data:`CT_REALISTIC` (``ct_realistic``) - liver CT evaluation, ``ct_fine``'s grid;
- :data:`MR_VARIED` (``mr_varied``) - ``glioma_mr`` training, ``mr_default``'s grid;
- :data:`MR_THICK` (``mr_thick``) - ``glioma_mr`` evaluation: 6 mm slices, 1 mm pixels,
  each slice the average over its thickness;
- :data:`MR_BRATS_VARIED` (``mr_brats_varied``) - ``glioma_brats`` training (the study
  is skull-stripped, so only the variation shows).
"""

from __future__ import annotations

from typing import Final

from .phantom_variation import Variation
from .phantoms import CT_FINE, MR_BRATS, MR_DEFAULT, LesionDistribution, SiteProfile

__all__ = ["CT_REALISTIC", "CT_VARIED", "MR_BRATS_VARIED", "MR_THICK", "MR_VARIED"]

#: Wide randomisation for training (SynthSeg's idea: vary what must not matter).
WIDE_CT: Final = Variation(
    tissue_hu=20.0,
    bias=25.0,
    psf_fwhm_mm=(0.0, 2.5),
    slice_fwhm_mm=(0.0, 4.0),
    deform_mm=6.0,
    deform_wavelength_mm=(80.0, 200.0),
    noise_gain=(0.6, 1.6),
)
#: Moderate variation for evaluation: what differs between real scanners and patients.
MODERATE_CT: Final = Variation(
    tissue_hu=8.0,
    bias=10.0,
    psf_fwhm_mm=(0.5, 1.5),
    slice_fwhm_mm=(0.0, 2.5),
    deform_mm=3.0,
    noise_gain=(0.8, 1.3),
)
WIDE_MR: Final = Variation(
    tissue_gain=0.15,
    bias=0.3,
    psf_fwhm_mm=(0.0, 2.5),
    slice_fwhm_mm=(0.0, 3.0),
    deform_mm=5.0,
    deform_wavelength_mm=(70.0, 160.0),
    noise_gain=(0.6, 1.6),
)

CT_VARIED: Final = SiteProfile(
    name="ct_varied",
    spacing_mm=CT_FINE.spacing_mm,
    matrix=CT_FINE.matrix,
    lesions=LesionDistribution(4.0, 40.0, 1, 5, isodense_fraction=0.2),
    detailed_anatomy=True,
    variation=WIDE_CT,
)
CT_REALISTIC: Final = SiteProfile(
    name="ct_realistic",
    spacing_mm=CT_FINE.spacing_mm,
    matrix=CT_FINE.matrix,
    lesions=LesionDistribution(4.0, 35.0, 1, 5, isodense_fraction=0.3),
    detailed_anatomy=True,
    variation=MODERATE_CT,
    seed=1,
)
MR_VARIED: Final = SiteProfile(
    name="mr_varied",
    spacing_mm=MR_DEFAULT.spacing_mm,
    matrix=MR_DEFAULT.matrix,
    noise_sigma=MR_DEFAULT.noise_sigma,
    lesions=MR_DEFAULT.lesions,
    bias_field=MR_DEFAULT.bias_field,
    detailed_anatomy=True,
    variation=WIDE_MR,
)
MR_THICK: Final = SiteProfile(
    name="mr_thick",
    spacing_mm=(6.0, 1.0, 1.0),
    matrix=(32, 220, 220),
    noise_sigma=MR_DEFAULT.noise_sigma,
    lesions=MR_DEFAULT.lesions,
    bias_field=MR_DEFAULT.bias_field,
    detailed_anatomy=True,
    variation=Variation(tissue_gain=0.05, psf_fwhm_mm=(0.0, 1.0), slice_samples=3),
    seed=1,
)
MR_BRATS_VARIED: Final = SiteProfile(
    name="mr_brats_varied",
    spacing_mm=MR_BRATS.spacing_mm,
    matrix=MR_BRATS.matrix,
    noise_sigma=MR_BRATS.noise_sigma,
    lesions=MR_BRATS.lesions,
    bias_field=MR_BRATS.bias_field,
    detailed_anatomy=True,
    variation=WIDE_MR,
)
