"""The one exception base of ``dicom_bridge`` and its subclasses."""

from __future__ import annotations


class DicomBridgeError(Exception):
    """Base of every error raised by ``dicom_bridge``."""


class InvalidUIDError(DicomBridgeError, ValueError):
    """A DICOM UID is missing, too long, or has characters other than digits and dots."""


class InstanceRejectedError(DicomBridgeError):
    """A received instance cannot be accepted; ``reason`` says why (no patient data).

    ``status`` is the DICOM C-STORE failure status the peer gets.
    """

    def __init__(self, reason: str, status: int = 0xC000) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class SpoolError(DicomBridgeError):
    """An instance could not be written durably to the spool."""


class VolumeError(DicomBridgeError):
    """A series cannot become a volume; ``reason`` is a short code, ``detail`` explains it."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SendError(DicomBridgeError):
    """A C-STORE/C-ECHO to a remote application entity failed."""


class MalformedDatasetError(DicomBridgeError):
    """A received dataset's encoding is broken (an element runs past its container)."""
