"""Where a site's training and evaluation cases come from (pluggable).

``phantom`` (tests, benchmarks, the simulation runtime): synthetic cases of one of
:data:`models.phantoms.SITE_PRESETS` or a generated hospital of
:mod:`models.site_distribution` (its CT or MR protocol by the task's modality),
optionally on a smaller grid. Case ``k`` of a site is always the same patient, so a
site's data are stable across rounds and runs (``phantom-seed`` draws other patients).
The last ``phantom-held-out`` cases (default 1; none when the site has one case) are held
out for evaluation and never trained on.

``store`` (an appliance joining with ``appliance federate join``): the site's ACTIVE
annotated cases of the task from its store (:func:`appliance.cases.loading.load_cases`): the
``train`` split for training, the ``held_out`` split for evaluation only.

A run that federates a two-stage model's refiner (``refiner-margin``) trains and scores
on the same cases cut to boxes around their truth (:func:`run_training_cases`,
:func:`run_held_out_cases`), as the refiner sees them behind the locator.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from pathlib import Path

import numpy as np

from appliance.errors import FederationError
from appliance.federation.settings import CaseSource, RunSettings
from appliance.federation.site_settings import SiteSettings
from models.errors import InputError
from models.phantoms import PhantomKind, generate_phantom
from models.site_distribution import site_hospital
from models.tasks import Modality, TaskSpec
from models.training_case import TrainingCase


@dataclass(frozen=True, slots=True)
class SiteCases:
    train: tuple[TrainingCase, ...]
    held_out: tuple[TrainingCase, ...]


def load_site_cases(site: SiteSettings, spec: TaskSpec) -> SiteCases:
    if site.source is CaseSource.PHANTOM:
        return _phantom_cases(site, spec)
    if site.source is CaseSource.STORE:
        return _store_cases(site, spec)
    raise FederationError(f"case-source: {site.source} is not available")


def _store_cases(site: SiteSettings, spec: TaskSpec) -> SiteCases:
    from appliance.cases.loading import load_cases
    from appliance.states import CaseSplit
    from appliance.store import Store

    if site.database is None or not site.database.is_file():
        raise FederationError(f"database: no appliance store at {site.database}")
    store = Store(site.database)
    try:
        train = [c.case for c in load_cases(store, spec.name, CaseSplit.TRAIN)]
        held_out = [c.case for c in load_cases(store, spec.name, CaseSplit.HELD_OUT)]
    finally:
        close = getattr(store, "close", None)
        if callable(close):
            close()
    if not train:
        raise FederationError(f"this site has no active training cases of task {spec.name}")
    return SiteCases(train=tuple(train), held_out=tuple(held_out))


@dataclass(frozen=True, slots=True)
class PhantomCase:
    """A phantom site case with its lesion map (for small-lesion metrics)."""

    case: TrainingCase
    lesion_map: np.ndarray


def phantom_site_cases(site: SiteSettings, modality: Modality) -> tuple[PhantomCase, ...]:
    """All ``phantom_cases`` cases of a phantom site (the held-out ones last), cached per
    process: on the simulation runtime one worker serves many messages of many sites."""
    return _phantoms(
        site.phantom_preset,
        site.phantom_cases,
        site.phantom_matrix,
        site.phantom_spacing,
        site.phantom_seed,
        modality,
        site.phantom_cache,
        site.phantom_grid_mm,
    )


_CACHE_VERSION = 1


def _cached_case(cache: Path | None, key: str, make: Callable[[], PhantomCase]) -> PhantomCase:
    """``make()``, kept as ``<cache>/<key>.npz`` (written atomically) when ``cache`` is set."""
    if cache is None:
        return make()
    path = cache / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                case = TrainingCase(data["image"], data["labels"], data["affine"])
                return PhantomCase(case, data["lesion_map"])
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a torn or foreign file: make it again
    made = make()
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz", dir=cache)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(
                handle,
                image=made.case.image,
                labels=made.case.labels,
                affine=made.case.affine,
                lesion_map=made.lesion_map,
            )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return made


@lru_cache(maxsize=8)
def _phantoms(
    preset: str,
    cases: int,
    matrix: tuple[int, ...] | None,
    spacing: tuple[float, ...] | None,
    seed: int,
    modality: Modality,
    cache: Path | None = None,
    grid_mm: float = 0.0,
) -> tuple[PhantomCase, ...]:
    try:
        hospital = site_hospital(preset)
    except KeyError as exc:
        raise FederationError(f"phantom-preset: {exc.args[0]}") from exc
    if modality == Modality.CT:
        profile, kind = hospital.ct, PhantomKind.CT_ABDOMEN
    else:
        profile, kind = hospital.mr, PhantomKind.MR_T1C
    if grid_mm > 0 and matrix is None and spacing is None:  # the same field of view, coarser
        extent = np.asarray(profile.matrix) * np.asarray(profile.spacing_mm)
        coarse = tuple(max(8, round(float(e) / grid_mm)) for e in extent)
        profile = replace(
            profile, matrix=(coarse[0], coarse[1], coarse[2]), spacing_mm=(grid_mm,) * 3
        )
    if matrix is not None:
        profile = replace(profile, matrix=(matrix[0], matrix[1], matrix[2]))
    if spacing is not None:
        profile = replace(profile, spacing_mm=(spacing[0], spacing[1], spacing[2]))
    if seed:
        profile = replace(profile, seed=profile.seed + 1000 * seed)
    fingerprint = hashlib.sha256(f"{_CACHE_VERSION}|{kind}|{profile!r}".encode()).hexdigest()[:16]

    def make(k: int) -> PhantomCase:
        p = generate_phantom(kind, profile, k)
        return PhantomCase(TrainingCase(p.image, p.labels, p.affine_lps), p.lesion_map)

    return tuple(
        _cached_case(cache, f"{preset}-{fingerprint}-{k}", partial(make, k)) for k in range(cases)
    )


def held_out_count(site: SiteSettings) -> int:
    """Held-out cases of a phantom site: ``phantom_held_out``, but never its only case."""
    return min(site.phantom_held_out, site.phantom_cases - 1)


def _phantom_cases(site: SiteSettings, spec: TaskSpec) -> SiteCases:
    cases = [c.case for c in phantom_site_cases(site, spec.modality)]
    split = len(cases) - held_out_count(site)
    return SiteCases(train=tuple(cases[:split]), held_out=tuple(cases[split:]))


def run_training_cases(
    run: RunSettings, cases: Sequence[TrainingCase], seed: int
) -> tuple[TrainingCase, ...]:
    """The cases a site trains the run's network on: its training cases, or for a refiner
    run each labelled one cut to its truth box grown by ``refiner-margin`` ± 5 mm per side
    (:func:`models.cascade_training.refiner_cases`, drawn with ``seed``: the round's seed
    of this site, so each round sees other boxes, as an imperfect locator gives them)."""
    settings = run.refiner_settings()
    if settings is None:
        return tuple(cases)
    from models.cascade_training import refiner_cases

    try:
        return tuple(refiner_cases(cases, settings, seed=seed))
    except InputError as exc:
        raise FederationError(
            f"this site cannot train the refiner of task {run.task}: {exc}"
        ) from exc


def run_held_out_cases(run: RunSettings, cases: Sequence[TrainingCase]) -> tuple[TrainingCase, ...]:
    """The cases a site scores the run's network on: its held-out cases, or for a refiner
    run each labelled one cut to its truth box grown by exactly ``refiner-margin`` (no
    jitter): the box a perfect locator gives, the same in every round, so the scores of
    rounds and sites compare the refiner alone. An unlabelled held-out case is left out."""
    settings = run.refiner_settings()
    if settings is None:
        return tuple(cases)
    from models.cascade_training import refiner_cases

    try:
        return tuple(refiner_cases(cases, settings, seed=run.seed, jitter_mm=0.0))
    except InputError:  # no held-out case has a label: nothing to score
        return ()
