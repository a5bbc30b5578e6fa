"""The model registry: versioned, checksummed model bundles on disk.

Layout (one folder per task, one per version)::

    <root>/
      liver_ct/
        1.0.0/
          weights.pt         torch.save of a state dict (tensors only)
          model_card.json    ModelCard (models.model_card), incl. weights_sha256
        1.1.0-fed.r3/
          ...
      glioma_mr/
        ...

Rules:

- Task names and versions are checked (:func:`models.model_card.check_task_name`,
  :func:`~models.model_card.check_version`) before they name anything on disk.
- :meth:`ModelRegistry.add` writes a bundle into a hidden temporary folder next to its
  final place, flushes it to disk, then renames it into place: a bundle is either
  complete or absent. An existing version is never overwritten.
- Weights are loaded only after their sha256 matches the card, from the very bytes that
  were hashed, with ``torch.load(..., weights_only=True)``. A mismatch raises
  :class:`WeightsIntegrityError` naming the bundle.
- Lifecycle state (:class:`models.lifecycle.ModelState`: candidate, validated, active,
  ...) is *not* stored in the bundle: the appliance's store records it.
- Networks are rebuilt from a card only for the MONAI classes in
  :data:`ALLOWED_NETWORKS` (:func:`build_network`).
"""

from __future__ import annotations

import builtins
import hashlib
import io
import logging
import math
import os
import re
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import ModelsError, NetworkConfigError
from .model_card import (
    CardLabel,
    InvalidNameError,
    ModelCard,
    ModelCardError,
    ModelProvenance,
    check_task_name,
    check_version,
    thaw,
    version_key,
)

__all__ = [
    "ALLOWED_NETWORKS",
    "CARD_FILE",
    "WEIGHTS_FILE",
    "BundleCorruptError",
    "BundleExistsError",
    "BundleNotFoundError",
    "InvalidNameError",
    "ModelBundle",
    "ModelRegistry",
    "RegistryError",
    "WeightsIntegrityError",
    "build_network",
    "resolve_network",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model_card.json"
_TMP_PREFIX = ".tmp-"


# -- errors --------------------------------------------------------------------------------


class RegistryError(ModelsError):
    """Base of the registry's errors."""


class BundleNotFoundError(RegistryError, LookupError):
    """No bundle with that task and version."""


class BundleExistsError(RegistryError):
    """A bundle with that task and version already exists; versions are immutable."""


class BundleCorruptError(RegistryError):
    """A bundle folder is incomplete or its files are unreadable or invalid."""


class WeightsIntegrityError(RegistryError):
    """A bundle's weights do not match the sha256 recorded in its model card."""


# -- networks ------------------------------------------------------------------------------

#: MONAI network classes (``monai.networks.nets``) that may be instantiated from a card
#: or an imported bundle's ``network_def``. Nothing else is ever constructed. All are
#: segmentation networks whose constructors build layers only (no downloads, no code).
ALLOWED_NETWORKS: frozenset[str] = frozenset(
    {
        "DynUNet",
        "SegResNet",
        "SegResNetDS",
        "UNet",
        "BasicUNet",
        "AttentionUnet",
        "UNETR",
        "SwinUNETR",
    }
)

_TARGET_RE = re.compile(
    r"(?:monai\.networks\.nets\.(?:(?P<module>[a-z_][a-z0-9_]*)\.)?)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
)
_CONFIG_SPECIAL = re.compile(r"_[A-Za-z]+_")  # MONAI config keys like _target_, _mode_


def resolve_network(target: str) -> str:
    """The canonical class name in :data:`ALLOWED_NETWORKS` for a network reference.

    Accepts ``"DynUNet"``, MONAI aliases such as ``"DynUnet"``,
    ``"monai.networks.nets.DynUNet"`` and ``"monai.networks.nets.dynunet.DynUNet"``;
    anything else raises :class:`NetworkConfigError`. No module outside
    ``monai.networks.nets`` is imported or looked at.
    """
    import monai.networks.nets as nets

    match = _TARGET_RE.fullmatch(target) if isinstance(target, str) else None
    if match is None:
        raise NetworkConfigError(
            f"network {target!r} is not allowed; allowed: {', '.join(sorted(ALLOWED_NETWORKS))}"
        )
    name = match.group("name")
    cls = getattr(nets, name, None)
    canonical = getattr(cls, "__name__", None)
    if not isinstance(cls, type) or canonical not in ALLOWED_NETWORKS:
        raise NetworkConfigError(
            f"network {target!r} is not allowed; allowed: {', '.join(sorted(ALLOWED_NETWORKS))}"
        )
    module = match.group("module")
    if module is not None and cls.__module__ != f"monai.networks.nets.{module}":
        raise NetworkConfigError(f"network {target!r} does not name a MONAI network class")
    assert isinstance(canonical, str)
    return canonical


def check_network_kwargs(kwargs: object, where: str = "kwargs") -> dict[str, Any]:
    """A plain copy of ``kwargs`` if it holds only JSON literals that MONAI's config parser
    will pass through unchanged: no ``$`` expressions, ``@`` references, ``%`` macros,
    nested ``_target_`` components or other ``_special_`` keys."""

    def walk(value: Any, at: str) -> Any:
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            if not math.isfinite(value):
                raise NetworkConfigError(f"{at}: {value!r} is not a finite number")
            return value
        if isinstance(value, str):
            if any(ch in value for ch in "$@%"):
                raise NetworkConfigError(
                    f"{at}: {value!r} contains '$', '@' or '%'; only plain values are allowed"
                )
            return value
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for key, item in value.items():
                if not isinstance(key, str) or _CONFIG_SPECIAL.fullmatch(key):
                    raise NetworkConfigError(f"{at}: key {key!r} is not allowed")
                out[key] = walk(item, f"{at}.{key}")
            return out
        if isinstance(value, list | tuple):
            return [walk(item, f"{at}[{i}]") for i, item in enumerate(value)]
        raise NetworkConfigError(f"{at}: {type(value).__name__} is not a plain JSON value")

    if not isinstance(kwargs, Mapping):
        raise NetworkConfigError(f"{where} must be a JSON object")
    checked = walk(kwargs, where)
    for key in checked:
        if not key.isidentifier():
            raise NetworkConfigError(f"{where}: {key!r} is not a keyword argument name")
    assert isinstance(checked, dict)
    return checked


def build_network(architecture: Mapping[str, Any]) -> torch.nn.Module:
    """Instantiate ``{"network": NAME, "kwargs": {...}}`` (a card's ``architecture``) with
    MONAI's bundle :class:`~monai.bundle.ConfigParser`, after checking that ``NAME`` is in
    :data:`ALLOWED_NETWORKS` and that the kwargs are plain values. Errors are
    :class:`NetworkConfigError`."""
    from monai.bundle import ConfigParser

    if not isinstance(architecture, Mapping):
        raise NetworkConfigError("architecture must be a mapping with 'network' and 'kwargs'")
    network = architecture.get("network")
    if not isinstance(network, str):
        raise NetworkConfigError("architecture.network must be a network class name")
    from .cascade import CascadeNetwork
    from .cascade_spec import CASCADE_NETWORK, stage_architectures

    if network == CASCADE_NETWORK:  # two allowed networks, each checked as any other
        locator, refiner = stage_architectures(architecture)
        return CascadeNetwork(build_network(locator), build_network(refiner))
    name = resolve_network(network)
    kwargs = check_network_kwargs(thaw(architecture.get("kwargs", {})), "architecture.kwargs")
    config = {"network_def": {"_target_": f"monai.networks.nets.{name}", **kwargs}}
    parser = ConfigParser(config, globals=False)
    try:
        module = parser.get_parsed_content("network_def")
    except Exception as exc:  # MONAI wraps constructor errors in RuntimeError
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise NetworkConfigError(
            f"could not build {name} from architecture.kwargs: {type(cause).__name__}: {cause}"
        ) from exc
    if not isinstance(module, torch.nn.Module):
        raise NetworkConfigError(f"{name} did not build a torch module")
    return module


# -- bundles -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelBundle:
    """One registered model version: its folder and its card."""

    path: Path
    card: ModelCard

    @property
    def task(self) -> str:
        return self.card.task

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def ref(self) -> str:
        """``task/version``, how messages and logs name a bundle."""
        return f"{self.card.task}/{self.card.version}"

    @property
    def weights_path(self) -> Path:
        return self.path / self.card.weights_file

    @property
    def card_path(self) -> Path:
        return self.path / CARD_FILE

    @property
    def provenance(self) -> ModelProvenance:
        """Model name, version, weights sha256 and federated round, for output objects."""
        return self.card.provenance


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _check_state_dict(state_dict: object) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping):
        raise RegistryError(f"a state dict must be a mapping, got {type(state_dict).__name__}")
    if not state_dict:
        raise RegistryError("the state dict is empty")
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise RegistryError(f"state dict keys must be strings, got {type(key).__name__}")
        if not isinstance(value, torch.Tensor):
            raise RegistryError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor"
            )
        # clone: a compact, CPU copy that does not drag along a larger shared storage
        out[key] = value.detach().to("cpu").clone().contiguous()
    return out


class ModelRegistry:
    """Versioned model bundles under ``root`` (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- paths ---------------------------------------------------------------------------

    def bundle_path(self, task: str, version: str) -> Path:
        """Where ``task/version`` lives; both are checked before they name a directory."""
        return self.root / check_task_name(task) / check_version(version)

    # -- writing -------------------------------------------------------------------------

    def add(
        self,
        task: str,
        version: str,
        state_dict: Mapping[str, torch.Tensor],
        *,
        name: str,
        labels: Sequence[CardLabel],
        architecture: Mapping[str, Any],
        preprocessing: Mapping[str, Any],
        intended_use: str,
        training_data: str,
        metrics: Mapping[str, float] | None = None,
        federated_round: int | None = None,
        parent_version: str | None = None,
        source: Mapping[str, Any] | None = None,
        created_at: str | None = None,
    ) -> ModelBundle:
        """Register ``state_dict`` as ``task/version`` with a card built from the fields.

        The card gets ``weights_sha256`` of the written weights file. Atomic: the bundle
        is complete or absent. :class:`BundleExistsError` if the version exists.
        """
        final = self.bundle_path(task, version)
        if parent_version is not None:
            check_version(parent_version)
        tensors = _check_state_dict(state_dict)
        buffer = io.BytesIO()
        torch.save(tensors, buffer)
        weights = buffer.getvalue()
        card = ModelCard(
            name=name,
            task=task,
            version=version,
            labels=tuple(labels),
            architecture=architecture,
            preprocessing=preprocessing,
            intended_use=intended_use,
            training_data=training_data,
            weights_sha256=hashlib.sha256(weights).hexdigest(),
            weights_file=WEIGHTS_FILE,
            created_at=created_at if created_at is not None else ModelCard.now(),
            metrics=metrics if metrics is not None else {},
            federated_round=federated_round,
            parent_version=parent_version,
            source=source if source is not None else {},
        )
        if os.path.lexists(final):
            raise BundleExistsError(
                f"model {task}/{version} already exists; versions are immutable"
            )

        task_dir = final.parent
        tmp = task_dir / f"{_TMP_PREFIX}{version}-{secrets.token_hex(6)}"
        try:
            task_dir.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
        except OSError as exc:
            raise RegistryError(f"could not store model {task}/{version}: {exc}") from exc
        try:
            try:
                _write_file(tmp / WEIGHTS_FILE, weights)
                _write_file(tmp / CARD_FILE, card.to_json().encode("utf-8"))
                _fsync_dir(tmp)
            except OSError as exc:
                raise RegistryError(f"could not store model {task}/{version}: {exc}") from exc
            if os.path.lexists(final):
                raise BundleExistsError(
                    f"model {task}/{version} already exists; versions are immutable"
                )
            try:
                os.rename(tmp, final)
            except OSError as exc:
                # Another writer won the race (rename onto a non-empty folder fails).
                if os.path.lexists(final):
                    raise BundleExistsError(
                        f"model {task}/{version} already exists; versions are immutable"
                    ) from exc
                raise RegistryError(f"could not store model {task}/{version}: {exc}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(task_dir)
        logger.info("registered model %s/%s sha256=%s", task, version, card.weights_sha256[:12])
        return ModelBundle(final, card)

    # -- reading -------------------------------------------------------------------------

    def get(self, task: str, version: str) -> ModelBundle:
        """The bundle ``task/version`` with its card read and validated (weights are checked
        by :meth:`verify` / :meth:`load_state_dict`)."""
        path = self.bundle_path(task, version)
        ref = f"{task}/{version}"
        if not path.is_dir():
            raise BundleNotFoundError(f"no model {ref} in the registry")
        card_path = path / CARD_FILE
        try:
            text = card_path.read_bytes()
        except FileNotFoundError as exc:
            raise BundleCorruptError(f"model {ref}: {CARD_FILE} is missing") from exc
        except OSError as exc:
            raise BundleCorruptError(f"model {ref}: cannot read {CARD_FILE}: {exc}") from exc
        try:
            card = ModelCard.from_json(text)
        except ModelCardError as exc:
            raise BundleCorruptError(f"model {ref}: invalid {CARD_FILE}: {exc}") from exc
        if card.task != task or card.version != version:
            raise BundleCorruptError(
                f"model {ref}: {CARD_FILE} says {card.task}/{card.version}; the folder and the "
                "card must agree"
            )
        return ModelBundle(path, card)

    def list(self, task: str | None = None) -> builtins.list[ModelBundle]:
        """Bundles of ``task`` (or of every task), sorted by task, then by version
        (semver order: ``1.2.9 < 1.2.10``, ``1.3.0-rc.1 < 1.3.0``). Folders that are not
        valid bundles are skipped with a warning."""
        if task is not None:
            tasks = [check_task_name(task)]
        elif self.root.is_dir():
            tasks = sorted(p.name for p in self.root.iterdir() if _is_valid_task_dir(p))
        else:
            tasks = []
        bundles: builtins.list[ModelBundle] = []
        for name in tasks:
            task_dir = self.root / name
            if not task_dir.is_dir():
                continue
            versions = [p.name for p in task_dir.iterdir() if _is_valid_version_dir(p)]
            for version in sorted(versions, key=version_key):
                try:
                    bundles.append(self.get(name, version))
                except RegistryError as exc:
                    logger.warning("skipping model folder %s/%s: %s", name, version, exc)
        return bundles

    def versions(self, task: str) -> builtins.list[str]:
        """The versions of ``task``, oldest first."""
        return [b.version for b in self.list(task)]

    def latest(self, task: str) -> ModelBundle | None:
        """The highest version of ``task``, whatever its lifecycle state, or None."""
        bundles = self.list(task)
        return bundles[-1] if bundles else None

    # -- weights -------------------------------------------------------------------------

    def _verified_bytes(self, bundle: ModelBundle) -> bytes:
        try:
            data = bundle.weights_path.read_bytes()
        except FileNotFoundError as exc:
            raise BundleCorruptError(
                f"model {bundle.ref}: weights file {bundle.card.weights_file} is missing"
            ) from exc
        except OSError as exc:
            raise BundleCorruptError(
                f"model {bundle.ref}: cannot read weights file {bundle.card.weights_file}: {exc}"
            ) from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != bundle.card.weights_sha256:
            raise WeightsIntegrityError(
                f"model {bundle.ref}: sha256 of {bundle.card.weights_file} is {digest[:16]}..., "
                f"the model card records {bundle.card.weights_sha256[:16]}...; refusing to "
                "load these weights"
            )
        return data

    def verify(self, bundle: ModelBundle) -> None:
        """Raise :class:`WeightsIntegrityError` unless the weights match the card."""
        self._verified_bytes(bundle)

    def load_state_dict(self, bundle: ModelBundle) -> dict[str, torch.Tensor]:
        """The bundle's weights (on CPU), after verifying their sha256. The bytes that are
        hashed are the bytes that are loaded, with ``weights_only=True``."""
        data = self._verified_bytes(bundle)
        try:
            loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle/runtime errors of several types
            raise BundleCorruptError(
                f"model {bundle.ref}: cannot load {bundle.card.weights_file}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
        ):
            raise BundleCorruptError(
                f"model {bundle.ref}: {bundle.card.weights_file} is not a state dict of tensors"
            )
        return loaded

    def load_network(
        self, bundle: ModelBundle, device: torch.device | str = "cpu"
    ) -> torch.nn.Module:
        """Rebuild the bundle's network from its card, load its verified weights with
        ``strict=True`` and return it in eval mode on ``device``."""
        state = self.load_state_dict(bundle)
        try:
            network = build_network(bundle.card.architecture)
        except NetworkConfigError as exc:
            raise NetworkConfigError(f"model {bundle.ref}: {exc}") from exc
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise NetworkConfigError(
                f"model {bundle.ref}: weights do not fit the recorded architecture: {exc}"
            ) from exc
        return network.to(device).eval()


def _is_valid_task_dir(path: Path) -> bool:
    if path.name.startswith(".") or not path.is_dir():
        return False
    try:
        check_task_name(path.name)
    except InvalidNameError:
        return False
    return True


def _is_valid_version_dir(path: Path) -> bool:
    if path.name.startswith(_TMP_PREFIX) or not path.is_dir():
        return False
    try:
        check_version(path.name)
    except InvalidNameError:
        return False
    return True
