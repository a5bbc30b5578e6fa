"""Where a site's training and evaluation cases come from (pluggable).

``phantom`` (tests, benchmarks, the simulation runtime): synthetic cases of one of
:data:`models.phantoms.SITE_PRESETS` (its CT or MR protocol by the task's modality),
optionally on a smaller grid. Case ``k`` of a site is always the same patient, so a
site's data are stable across rounds and runs. The last case (when there are at least
two) is held out for evaluation and never trained on.

``store`` (an appliance joining with ``appliance federate join``): the site's ACTIVE
annotated cases of the task from its store (:func:`appliance.cases.load_cases`): the
``train`` split for training, the ``held_out`` split for evaluation only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from appliance.federation.errors import FederationError
from appliance.federation.settings import CaseSource, SiteSettings
from models.phantoms import SITE_PRESETS, PhantomKind, generate_phantom
from models.tasks import Modality, TaskSpec
from models.training import TrainingCase


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
    from appliance.case_states import CaseSplit
    from appliance.cases import load_cases
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


def _phantom_cases(site: SiteSettings, spec: TaskSpec) -> SiteCases:
    try:
        hospital = SITE_PRESETS[site.phantom_preset]
    except KeyError as exc:
        known = ", ".join(SITE_PRESETS)
        raise FederationError(
            f"phantom-preset: unknown preset {site.phantom_preset!r}; known: {known}"
        ) from exc
    if spec.modality == Modality.CT:
        profile, kind = hospital.ct, PhantomKind.CT_ABDOMEN
    else:
        profile, kind = hospital.mr, PhantomKind.MR_T1C
    if site.phantom_matrix is not None:
        m = site.phantom_matrix
        profile = replace(profile, matrix=(m[0], m[1], m[2]))
    if site.phantom_spacing is not None:
        sp = site.phantom_spacing
        profile = replace(profile, spacing_mm=(sp[0], sp[1], sp[2]))
    cases = []
    for k in range(site.phantom_cases):
        p = generate_phantom(kind, profile, k)
        cases.append(TrainingCase(p.image, p.labels, p.affine_lps))
    if len(cases) < 2:
        return SiteCases(train=tuple(cases), held_out=())
    return SiteCases(train=tuple(cases[:-1]), held_out=(cases[-1],))
