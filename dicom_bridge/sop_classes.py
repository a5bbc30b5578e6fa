"""The storage SOP classes and transfer syntaxes the appliance accepts and sends."""

from __future__ import annotations

from typing import Final

from pydicom.uid import UID

# --- Storage SOP classes --------------------------------------------------------------
CT_IMAGE: Final = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT: Final = UID("1.2.840.10008.5.1.4.1.1.2.1")
LEGACY_ENHANCED_CT: Final = UID("1.2.840.10008.5.1.4.1.1.2.2")
MR_IMAGE: Final = UID("1.2.840.10008.5.1.4.1.1.4")
ENHANCED_MR: Final = UID("1.2.840.10008.5.1.4.1.1.4.1")
LEGACY_ENHANCED_MR: Final = UID("1.2.840.10008.5.1.4.1.1.4.4")
SEGMENTATION: Final = UID("1.2.840.10008.5.1.4.1.1.66.4")
LABEL_MAP_SEGMENTATION: Final = UID("1.2.840.10008.5.1.4.1.1.66.7")
SECONDARY_CAPTURE: Final = UID("1.2.840.10008.5.1.4.1.1.7")
MF_SC_BYTE: Final = UID("1.2.840.10008.5.1.4.1.1.7.2")
MF_SC_WORD: Final = UID("1.2.840.10008.5.1.4.1.1.7.3")
MF_SC_TRUE_COLOR: Final = UID("1.2.840.10008.5.1.4.1.1.7.4")
ENHANCED_SR: Final = UID("1.2.840.10008.5.1.4.1.1.88.22")
COMPREHENSIVE_SR: Final = UID("1.2.840.10008.5.1.4.1.1.88.33")
COMPREHENSIVE_3D_SR: Final = UID("1.2.840.10008.5.1.4.1.1.88.34")

ACCEPTED_STORAGE_CLASSES: Final[tuple[UID, ...]] = (
    CT_IMAGE,
    ENHANCED_CT,
    LEGACY_ENHANCED_CT,
    MR_IMAGE,
    ENHANCED_MR,
    LEGACY_ENHANCED_MR,
    SEGMENTATION,
    LABEL_MAP_SEGMENTATION,
    SECONDARY_CAPTURE,
    MF_SC_BYTE,
    MF_SC_WORD,
    MF_SC_TRUE_COLOR,
    ENHANCED_SR,
    COMPREHENSIVE_SR,
    COMPREHENSIVE_3D_SR,
)

#: Classes whose instances are images that can be assembled into a volume.
VOLUME_CLASSES: Final[frozenset[UID]] = frozenset(
    {CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT, MR_IMAGE, ENHANCED_MR, LEGACY_ENHANCED_MR}
)
SEGMENTATION_CLASSES: Final[frozenset[UID]] = frozenset({SEGMENTATION, LABEL_MAP_SEGMENTATION})

# --- Transfer syntaxes ------------------------------------------------------------------
IMPLICIT_VR_LE: Final = UID("1.2.840.10008.1.2")
EXPLICIT_VR_LE: Final = UID("1.2.840.10008.1.2.1")
DEFLATED_EXPLICIT_VR_LE: Final = UID("1.2.840.10008.1.2.1.99")
EXPLICIT_VR_BE: Final = UID("1.2.840.10008.1.2.2")
RLE_LOSSLESS: Final = UID("1.2.840.10008.1.2.5")
JPEG_BASELINE: Final = UID("1.2.840.10008.1.2.4.50")
JPEG_EXTENDED: Final = UID("1.2.840.10008.1.2.4.51")
JPEG_LOSSLESS: Final = UID("1.2.840.10008.1.2.4.57")
JPEG_LOSSLESS_SV1: Final = UID("1.2.840.10008.1.2.4.70")
JPEG_LS_LOSSLESS: Final = UID("1.2.840.10008.1.2.4.80")
JPEG_LS_NEAR_LOSSLESS: Final = UID("1.2.840.10008.1.2.4.81")
JPEG_2000_LOSSLESS: Final = UID("1.2.840.10008.1.2.4.90")
JPEG_2000: Final = UID("1.2.840.10008.1.2.4.91")
HTJ2K_LOSSLESS: Final = UID("1.2.840.10008.1.2.4.201")
HTJ2K_LOSSLESS_RPCL: Final = UID("1.2.840.10008.1.2.4.202")
HTJ2K: Final = UID("1.2.840.10008.1.2.4.203")

UNCOMPRESSED_SYNTAXES: Final[tuple[UID, ...]] = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
)

#: Every transfer syntax the listener accepts, each one readable by the installed decoders
#: (pylibjpeg-libjpeg, pylibjpeg-openjpeg, pyjpegls, pydicom's RLE decoder).
ACCEPTED_TRANSFER_SYNTAXES: Final[tuple[UID, ...]] = (
    *UNCOMPRESSED_SYNTAXES,
    RLE_LOSSLESS,
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JPEG_LOSSLESS,
    JPEG_LOSSLESS_SV1,
    JPEG_LS_LOSSLESS,
    JPEG_LS_NEAR_LOSSLESS,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
    HTJ2K,
)
