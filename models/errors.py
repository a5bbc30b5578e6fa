"""The one exception family of ``models``.

Everything this package raises on purpose derives from :class:`ModelsError`, so the
appliance can catch one type where model code is called. Third-party errors (torch,
MONAI) are translated where they enter, with ``raise ... from exc``. Messages never
contain patient data: they describe shapes, values of specs and settings only.
"""

from __future__ import annotations


class ModelsError(Exception):
    """Base class of every error raised by ``models``."""


class SpecError(ModelsError, ValueError):
    """A task, label, channel, intensity or post-processing spec is invalid."""


class NetworkConfigError(ModelsError, ValueError):
    """A network architecture config is invalid or does not fit the task."""


class GeometryError(ModelsError, ValueError):
    """An affine is not a valid voxel-to-patient matrix, or does not fit the array."""


class InputError(ModelsError, ValueError):
    """An image given to inference does not match what the task expects."""


class InputTooLargeError(InputError):
    """The grid an image would be resampled to is over the working-grid limit."""


class InferenceError(ModelsError, RuntimeError):
    """Running the network failed, or it returned something the task cannot use."""


class BundleImportError(ModelsError, ValueError):
    """A MONAI bundle folder cannot be imported; the message names the file and field."""


class ChannelMapError(BundleImportError):
    """A bundle's output channels cannot be mapped to a task's labels, or a ``--label-map``
    is malformed; the message says what the bundle segments and what the task needs."""
