"""The shipped demo weights: trained on synthetic phantoms by one reproducible command.

The weights under ``models/bundles/<task>/<version>/`` were made with::

    appliance train --task liver_ct  --out models/bundles --seed 0 --steps 3600 --cases 24
    appliance train --task liver_ct  --out models/bundles --seed 0 --steps 1500 --cases 24 \
        --version 0.2.0 --profile ct_fine --init-from 0.1.0 --lr 0.001
    appliance train --task glioma_mr --out models/bundles --seed 0 --steps 2000 --cases 24
    appliance train --task glioma_brats --out models/bundles --seed 0 --steps 600 --cases 12

which is this module's :func:`main` (``python -m models.demo_weights --task ... --out
... --seed ... --steps ... --cases ...`` runs the same thing without the CLI), with
``torch.set_num_threads(2)`` (``--threads``). ``--evaluate-only`` re-runs step 3 on the
bundle already registered (the quality check of issue 3), on one set of ``--eval-cases``
phantoms per ``--seed`` (repeatable) or ``--seeds S,S``, with one table per set, the
combined figures and 95 % bootstrap intervals (``--json PATH`` writes them all). Each run:

1. generates ``cases`` training phantoms (:func:`models.phantoms.generate_phantom`) from
   the task's demo profile (:data:`CT_DEFAULT` / :data:`MR_DEFAULT`, or ``--profile``,
   e.g. :data:`CT_FINE`) with a training seed; MR cases alternate T1 post-contrast and
   FLAIR, since the task accepts either; ``glioma_brats`` cases are four-sequence studies
   (:func:`models.phantoms.brats_mr_study`, profile :data:`MR_BRATS`) whose training
   labels are the tumour's tissue classes;
2. trains the task's default network (the recipe's: :data:`models.networks.DEFAULT_NETWORK`,
   or for ``glioma_brats`` a UNet with half its filters, 8-16-32-64, so the sigmoid
   demo bundle stays near 1 MB; ``--network`` and
   ``--filters`` pick another MONAI architecture, e.g. a DynUNet for a GPU) with
   :func:`models.training.train` at the task's spacing and patch size, from random
   weights or, with ``--init-from VERSION``, from a bundle already in the registry;
3. evaluates on ``eval_cases`` **fresh** phantoms (another seed, never seen in
   training) through the clinical inference path (:func:`models.inference.segment`,
   post-processing included), with :mod:`models.evaluation`;
4. registers the bundle with a model card that says it was trained on synthetic
   phantoms and is not for clinical use, and records the fresh-phantom metrics.

``liver_ct`` 0.2.0 is 0.1.0 (no longer shipped) fine-tuned on the same patients drawn on
the model's own grid (2 mm slices, 1.5 mm pixels, profile ``ct_fine``) instead of 2.5 mm
voxels, where a 5 mm lesion spans two voxels. ``liver_ct`` 0.3.0 is the two-stage model
(``--refine-from 0.2.0``: 0.2.0 unchanged as the locator, a full-resolution DynUNet refiner
trained on ``ct_varied`` phantoms); being the highest version, it is the one a first start
activates, and 0.2.0 stays registered for rollback.

Long runs: ``--checkpoint PATH`` (every ``--checkpoint-every`` steps, default 200) makes
a rerun of the same command resume an interrupted run; ``--log PATH`` appends timestamped
progress lines (:class:`models.progress.TrainingProgress`, also the live line on a
terminal); ``--validate-every N --validate-cases K`` keeps and registers the weights that
score best on K validation phantoms of their own seed (:class:`PeriodicValidation`);
``--precision`` and ``--thin-slab-probability`` are :class:`models.training.TrainConfig`'s.
See ``docs/training.md``.

Results depend on the seed (and, through floating point, slightly on the CPU's math
library); the numbers measured when the shipped bundles were made are in their cards.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import nn

from .cascade import CascadeNetwork, locate, segment_cascade
from .cascade_spec import (
    REFINER_KEY,
    RefinerSettings,
    cascade_architecture,
    refiner_spec,
    stage_architectures,
)
from .cascade_training import (
    REFINER_JITTER_MM,
    cascade_state_dict,
    refiner_cases,
    split_state_dict,
)
from .errors import InputError, ModelsError, NetworkConfigError, SpecError
from .evaluation import CaseMetrics, EvaluationSummary, evaluate_case, summarize
from .inference import SegmentationResult, resolve_device, segment
from .intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED
from .lesion_size import LesionSizeBin
from .model_card import DEMO_INTENDED_USE, labels_for_task, preprocessing_for_task, thaw
from .networks import (
    DEFAULT_NETWORK,
    Architecture,
    NetworkConfig,
    build_network,
    network_architecture,
)
from .phantom_profiles import CT_REALISTIC, CT_VARIED, MR_BRATS_VARIED, MR_THICK, MR_VARIED
from .phantoms import (
    CT_DEFAULT,
    CT_FINE,
    MR_BRATS,
    MR_DEFAULT,
    PhantomKind,
    SiteProfile,
    generate_phantom,
)
from .precision import Precision, PrecisionError, training_precision
from .progress import ProgressError, TrainingProgress
from .registry import BundleNotFoundError, ModelBundle, ModelRegistry
from .tasks import TaskName, TaskSpec, get_task
from .training import (
    StepInfo,
    TrainConfig,
    TrainingCase,
    TrainingError,
    TrainReport,
    train,
)

logger = logging.getLogger(__name__)

DEMO_VERSION = "0.1.0"

#: Seeds of the phantom generator: training, validation and evaluation never share one
#: (``+ 1000 * seed``; the validation seeds end in 501, so they match no training or
#: evaluation seed of any ``--seed`` either).
TRAIN_PHANTOM_SEED = 7001
EVAL_PHANTOM_SEED = 8001
VALIDATION_PHANTOM_SEED = 9501

#: ``--checkpoint-every`` when ``--checkpoint`` is given without it.
DEFAULT_CHECKPOINT_EVERY = 200


class DemoWeightsError(ModelsError, ValueError):
    """A demo-weights run that cannot start as asked (unknown profile, parent bundle)."""


@dataclass(frozen=True, slots=True)
class DemoRecipe:
    """Phantom kinds and profile, and sampling ratios, for one task's demo weights."""

    kinds: tuple[PhantomKind, ...]
    profile: SiteProfile
    class_ratios: tuple[float, ...]
    #: crop training volumes to the body (faster) - only where it cannot change the
    #: normalisation: a CT window is absolute, but the MR z-score's foreground rule is
    #: relative to the mean intensity, which cropping changes (inference does not crop)
    crop_foreground: bool = False
    #: sample lesion patches lesion by lesion (see models.training), so that small
    #: tumours are seen as often as large ones
    balance_lesions: bool = False
    #: the network trained unless ``--network``/``--filters`` say otherwise
    network: NetworkConfig = DEFAULT_NETWORK
    #: a two-stage model's refiner (``--refine-from``): its grid and box margin, and the
    #: network trained as it unless ``--network``/``--filters`` say otherwise
    refiner: RefinerSettings | None = None
    refiner_network: NetworkConfig | None = None


RECIPES: dict[TaskName, DemoRecipe] = {
    TaskName.LIVER_CT: DemoRecipe(
        kinds=(PhantomKind.CT_ABDOMEN,),
        profile=CT_DEFAULT,
        class_ratios=(0.3, 0.3, 0.4),  # background, liver, tumour
        crop_foreground=True,
        balance_lesions=True,
        # stage 2 of the two-stage liver model: a full-resolution first level (DynUNet,
        # stride 1) on a 1 x 1 x 1.5 mm grid inside the liver's box + 10 mm
        refiner=RefinerSettings((1.0, 1.0, 1.5), (64, 64, 48), 10.0),
        refiner_network=NetworkConfig(name=Architecture.DYNUNET, filters=(8, 16, 32, 64, 128)),
    ),
    TaskName.GLIOMA_MR: DemoRecipe(
        kinds=(PhantomKind.MR_T1C, PhantomKind.MR_FLAIR),
        profile=MR_DEFAULT,
        class_ratios=(0.3, 0.7),
    ),
    TaskName.GLIOMA_BRATS: DemoRecipe(
        kinds=(PhantomKind.MR_BRATS,),
        profile=MR_BRATS,
        # background, then the tissue classes: necrotic core, oedema, enhancing
        class_ratios=(0.25, 0.2, 0.25, 0.3),
        network=NetworkConfig(filters=(8, 16, 32, 64)),
    ),
}


#: Phantom profiles ``--profile`` may name, per task (the recipe's own comes first). The
#: ``*_varied`` ones randomise each case widely for training, ``ct_realistic`` and
#: ``mr_thick`` are harder evaluation sets (see :mod:`models.phantom_profiles`).
PROFILES: dict[TaskName, tuple[SiteProfile, ...]] = {
    TaskName.LIVER_CT: (CT_DEFAULT, CT_FINE, CT_VARIED, CT_REALISTIC),
    TaskName.GLIOMA_MR: (MR_DEFAULT, MR_VARIED, MR_THICK),
    TaskName.GLIOMA_BRATS: (MR_BRATS, MR_BRATS_VARIED),
}


def named_profiles(task: TaskName | str, names: str) -> Profiles:
    """The task's profile called ``names``, or (comma-separated names) a mix of them."""
    parts = [n.strip() for n in str(names).split(",")]
    if len(parts) == 1:
        return named_profile(task, parts[0])
    if len(set(parts)) != len(parts) or "" in parts:
        raise DemoWeightsError(f"--profile {names!r}: list distinct profile names")
    return tuple(named_profile(task, n) for n in parts)


def named_profile(task: TaskName | str, name: str | None) -> SiteProfile:
    """The task's phantom profile called ``name`` (``None``: the recipe's)."""
    task = TaskName(task)
    if name is None:
        return RECIPES[task].profile
    for profile in PROFILES[task]:
        if profile.name == name:
            return profile
    allowed = ", ".join(p.name for p in PROFILES[task])
    raise DemoWeightsError(
        f"--profile {name!r} is not a {task} phantom profile; use one of: {allowed}"
    )


#: One phantom profile, or a mix of several (case ``k`` is drawn from profile ``k mod n``).
Profiles = SiteProfile | tuple[SiteProfile, ...]


def profile_mix(task: TaskName | str, profile: Profiles | None) -> tuple[SiteProfile, ...]:
    """``profile`` as a tuple of profiles (``None``: the recipe's alone)."""
    if profile is None:
        return (RECIPES[TaskName(task)].profile,)
    mix = (profile,) if isinstance(profile, SiteProfile) else tuple(profile)
    if not mix or len({p.name for p in mix}) != len(mix):
        raise DemoWeightsError("a profile mix needs one or more distinct profiles")
    return mix


def profile_name(task: TaskName | str, profile: Profiles | None) -> str:
    """The name of ``profile`` as the card and the command give it (a mix: comma-joined)."""
    return ",".join(p.name for p in profile_mix(task, profile))


def phantom_cases(
    task: TaskName | str, *, seed: int, cases: int, profile: Profiles | None = None
) -> list[tuple[TrainingCase, np.ndarray]]:
    """``cases`` phantoms for ``task`` from ``profile`` (default: the recipe's; a mix of
    profiles: case ``k`` from profile ``k mod n``) reseeded with ``seed``:
    ``(case, lesion_map)`` pairs."""
    recipe = RECIPES[TaskName(task)]
    sites = [replace(base, seed=seed) for base in profile_mix(task, profile)]
    out = []
    for k in range(cases):
        kind = recipe.kinds[k % len(recipe.kinds)]
        p = generate_phantom(kind, sites[k % len(sites)], k)
        out.append((TrainingCase(p.image, p.labels, p.affine_lps), p.lesion_map))
    return out


def score_cases(
    model: nn.Module,
    spec: TaskSpec,
    cases: Sequence[tuple[TrainingCase, np.ndarray]],
    *,
    on_case: Callable[[int, CaseMetrics, float], None] | None = None,
    device: str | None = None,
    refiner: RefinerSettings | None = None,
    located: Sequence[SegmentationResult] | None = None,
) -> list[CaseMetrics]:
    """Segment each case through :func:`models.inference.segment` (on CUDA, with its
    autocast, where there is a GPU, unless ``device`` says otherwise) and score it. With
    ``refiner`` the model is a two-stage :class:`~models.cascade.CascadeNetwork` and runs
    as one (:func:`models.cascade.segment_cascade`), ``located`` being its stage-1 results
    per case when they are known already."""
    if refiner is not None and not isinstance(model, CascadeNetwork):
        raise DemoWeightsError("a refiner's settings need a two-stage network")
    if located is not None and len(located) != len(cases):
        raise DemoWeightsError("need one stage-1 result per case")
    results: list[CaseMetrics] = []
    for number, (case, lesion_map) in enumerate(cases):
        start = time.perf_counter()
        if refiner is not None:
            assert isinstance(model, CascadeNetwork)
            mask = segment_cascade(
                model,
                spec,
                refiner,
                case.image,
                case.affine,
                device=device,
                located=None if located is None else located[number],
            ).mask
        else:
            mask = segment(model, spec, case.image, case.affine, device=device).mask
        metrics = evaluate_case(mask, case.labels, case.affine, spec, lesion_map=lesion_map)
        results.append(metrics)
        if on_case is not None:
            on_case(number, metrics, time.perf_counter() - start)
    return results


def evaluate_model(
    model: nn.Module,
    spec: TaskSpec,
    cases: Sequence[tuple[TrainingCase, np.ndarray]],
    *,
    on_case: Callable[[int, CaseMetrics, float], None] | None = None,
    device: str | None = None,
    refiner: RefinerSettings | None = None,
    located: Sequence[SegmentationResult] | None = None,
) -> EvaluationSummary:
    """:func:`score_cases`, summarised (:func:`models.evaluation.summarize`)."""
    return summarize(
        score_cases(
            model, spec, cases, on_case=on_case, device=device, refiner=refiner, located=located
        )
    )


def validation_score(summary: EvaluationSummary) -> float:
    """The score periodic validation keeps the best weights by: the mean over the task's
    labels of the per-case mean Dice (labels no case scored are left out; 0 if none)."""
    means = [stat.mean for stat in summary.dice.values() if math.isfinite(stat.mean)]
    return float(np.mean(means)) if means else 0.0


@dataclass(slots=True, eq=False)
class PeriodicValidation:
    """Every ``every`` steps (and after the last) score the model being trained on the
    validation ``cases`` through :func:`evaluate_model` and keep a copy of the best
    weights (by :func:`validation_score`; the earlier step wins a tie). An ``on_step``
    callback and the ``extra_state`` of :func:`models.training.train`, so a resumed run
    keeps the best so far. The torch random state is restored after each validation, so
    validating does not change the training. A refiner being trained (``refiner`` set)
    is scored as stage 2 of ``cascade``, whose stage 1 runs once per case."""

    model: nn.Module
    spec: TaskSpec
    cases: Sequence[tuple[TrainingCase, np.ndarray]]
    every: int
    log: Callable[[str], None] = print
    best_step: int = 0
    best_score: float = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    scores: list[tuple[int, float]] = field(default_factory=list)
    cascade: CascadeNetwork | None = None
    refiner: RefinerSettings | None = None
    _located: list[SegmentationResult] | None = None

    def __post_init__(self) -> None:
        if self.every < 1:
            raise DemoWeightsError(f"--validate-every must be >= 1, got {self.every}")
        if not self.cases:
            raise DemoWeightsError("--validate-cases must be >= 1 with --validate-every")

    def __call__(self, info: StepInfo) -> None:
        if info.step % self.every != 0 and info.step != info.steps:
            return
        with torch.random.fork_rng():
            score = validation_score(self._evaluate())
        self.scores.append((info.step, score))
        better = score > self.best_score
        if better:
            self.best_step, self.best_score = info.step, score
            self.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
        self.log(
            f"[{self.spec.name}] validation at step {info.step}: score {score:.4f} "
            f"(best {self.best_score:.4f} at step {self.best_step}{', kept' if better else ''})"
        )

    def _evaluate(self) -> EvaluationSummary:
        if self.cascade is None or self.refiner is None:
            return evaluate_model(self.model, self.spec, self.cases)
        if self._located is None:  # stage 1 does not change while its refiner trains
            self._located = [
                locate(self.cascade, self.spec, case.image, case.affine) for case, _ in self.cases
            ]
        return evaluate_model(
            self.cascade, self.spec, self.cases, refiner=self.refiner, located=self._located
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            "best_score": self.best_score,
            "best_state": self.best_state,
            "scores": [[step, score] for step, score in self.scores],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best_step = int(state["best_step"])
        self.best_score = float(state["best_score"])
        saved = state["best_state"]
        self.best_state = None if saved is None else dict(saved)
        self.scores = [(int(step), float(score)) for step, score in state["scores"]]


def train_demo_weights(
    task: TaskName | str,
    out_registry_root: Path,
    *,
    seed: int = 0,
    cases: int = 24,
    steps: int = 900,
    eval_cases: int = 10,
    batch_size: int = 2,
    version: str = DEMO_VERSION,
    network: NetworkConfig | None = None,
    profile: Profiles | None = None,
    init_from: str | None = None,
    lr: float | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    log: Callable[[str], None] = print,
    checkpoint: Path | None = None,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    precision: Precision | str = Precision.AUTO,
    thin_slab_probability: float = 0.0,
    validate_every: int = 0,
    validate_cases: int = 0,
    progress: Callable[[StepInfo], None] | None = None,
    refine_from: str | None = None,
    refiner: RefinerSettings | None = None,
    eval_profile: SiteProfile | None = None,
    eval_seeds: Sequence[int] | None = None,
    blob_loss_weight: float = 0.0,
    false_blob_weight: float = 0.0,
) -> ModelBundle:
    """Generate phantoms, train, evaluate on fresh phantoms, register the bundle
    ``task/version`` under ``out_registry_root`` (see the module docstring).

    ``init_from``: a version of the same task in that registry whose (verified) weights
    the training starts from instead of a random initialisation - fine-tuning; the new
    card names it as its parent. ``lr``: the initial learning rate (default: training's).
    ``network``: default the recipe's.

    ``checkpoint``: the training checkpoint file, written every ``checkpoint_every``
    steps; calling again with the same arguments resumes from it (the phantoms and the
    starting weights are regenerated identically from the seeds). ``precision``,
    ``thin_slab_probability``: see :class:`models.training.TrainConfig`.
    ``validate_every``/``validate_cases``: every that many steps score the weights on
    ``validate_cases`` fresh phantoms (seed :data:`VALIDATION_PHANTOM_SEED` ``+ 1000 *
    seed``) and register the best (:class:`PeriodicValidation`). ``progress``: an
    ``on_step`` callback that replaces the periodic step lines of ``log`` (e.g. a
    :class:`models.progress.TrainingProgress`).

    ``refine_from``: train a two-stage model (:mod:`models.cascade`): the registered
    one-stage version ``refine_from`` of the task is stage 1, unchanged, and the network
    trained is stage 2, the refiner, on ``refiner``'s grid (default: the recipe's) over
    the training phantoms cut to their truth boxes (:mod:`models.cascade_training`);
    ``network`` defaults to the recipe's refiner network, ``init_from`` must then name a
    two-stage version whose refiner starts the training; validation and evaluation run
    both stages. The bundle holds both (one card, one weights file).

    ``eval_profile``/``eval_seeds``: the final evaluation's phantom profile (default: the
    training profile) and evaluation sets (default: the training seed's set), each of
    ``eval_cases`` phantoms; the card records the figures of all sets together
    (:func:`evaluate_sets`). ``profile`` may be a mix of profiles (training and
    validation phantoms alternate between them).

    ``blob_loss_weight``, ``false_blob_weight``: see :class:`models.training.TrainConfig`
    (0: off).
    """
    if validate_every < 0 or validate_cases < 0:
        raise DemoWeightsError("--validate-every and --validate-cases must be >= 0")
    if (validate_every > 0) != (validate_cases > 0):
        raise DemoWeightsError("--validate-every and --validate-cases go together")
    if checkpoint_every < 1:
        raise DemoWeightsError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    try:  # before any phantom is drawn: bf16 on a CPU without it fails at once
        training_precision(resolve_device(None), precision)
    except (PrecisionError, InputError) as exc:
        raise DemoWeightsError(f"--precision {precision}: {exc}") from exc
    spec = get_task(task)
    recipe = RECIPES[spec.name]
    registry = ModelRegistry(Path(out_registry_root))
    stage1 = None if refine_from is None else _Stage1.load(registry, spec, refine_from, refiner)
    if network is None:
        network = recipe.network if stage1 is None else stage1.network_default
    train_spec = spec if stage1 is None else refiner_spec(spec, stage1.settings)
    parent = None
    if init_from is not None:
        try:
            parent = registry.get(str(spec.name), init_from)
        except BundleNotFoundError as exc:
            raise DemoWeightsError(
                f"--init-from {init_from}: no {spec.name} bundle of that version under "
                f"{out_registry_root}"
            ) from exc
        trained_part = thaw(parent.card.architecture)
        if stage1 is not None:
            if parent.card.refiner is None:
                raise DemoWeightsError(
                    f"--init-from {parent.ref}: with --refine-from it must be a two-stage "
                    "version, whose refiner starts the training"
                )
            trained_part = thaw(stage_architectures(parent.card.architecture)[1])
        if trained_part != network_architecture(train_spec, network):
            raise DemoWeightsError(
                f"--init-from {parent.ref}: its architecture differs from the network being trained"
            )
    start = time.perf_counter()
    train_seed = TRAIN_PHANTOM_SEED + 1000 * seed
    if eval_seeds is not None and train_seed in {eval_phantom_seed(e) for e in eval_seeds}:
        raise DemoWeightsError(
            f"--eval-seeds {','.join(map(str, eval_seeds))}: a set would be the training "
            f"phantoms (seed {train_seed}); pick others"
        )
    training = phantom_cases(spec.name, seed=train_seed, cases=cases, profile=profile)
    log(f"[{spec.name}] generated {cases} training phantoms in {time.perf_counter() - start:.1f}s")

    train_cases = [c for c, _ in training]
    if stage1 is not None:
        train_cases = refiner_cases(train_cases, stage1.settings, seed=seed)
        log(
            f"[{spec.name}] refiner: {len(train_cases)} cases cut to their truth box "
            f"+ {stage1.settings.margin_mm:g} mm (+- {REFINER_JITTER_MM:g} mm per side)"
        )

    torch.manual_seed(seed)
    model = build_network(train_spec, network)
    if parent is not None:
        weights = registry.load_state_dict(parent)
        if stage1 is not None:
            weights = split_state_dict(weights)[1]
        model.load_state_dict(weights, strict=True)
        log(f"[{spec.name}] starting from {parent.ref} (sha256 {parent.card.weights_sha256[:12]})")
    try:
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            seed=seed,
            class_ratios=recipe.class_ratios,
            crop_foreground=recipe.crop_foreground and stage1 is None,  # a box is cropped
            balance_lesions=recipe.balance_lesions,
            precision=Precision(precision),
            thin_slab_probability=thin_slab_probability,
            blob_loss_weight=blob_loss_weight,
            false_blob_weight=false_blob_weight,
        )
    except (ValueError, TrainingError) as exc:
        raise DemoWeightsError(str(exc)) from exc
    if lr is not None:
        config = replace(config, lr=lr)
    scored: nn.Module = model if stage1 is None else CascadeNetwork(stage1.network, model)
    settings = None if stage1 is None else stage1.settings
    validation_seed = VALIDATION_PHANTOM_SEED + 1000 * seed
    validation = (
        PeriodicValidation(
            model,
            spec,
            phantom_cases(spec.name, seed=validation_seed, cases=validate_cases, profile=profile),
            validate_every,
            log=log,
            cascade=scored if isinstance(scored, CascadeNetwork) else None,
            refiner=settings,
        )
        if validate_every > 0
        else None
    )

    def _progress(info: StepInfo) -> None:
        if on_step is not None:
            on_step(info)
        if progress is not None:
            progress(info)
        elif info.step % 25 == 0 or info.step == info.steps:
            log(
                f"[{spec.name}] step {info.step}/{info.steps} loss {info.loss:.4f} "
                f"lr {info.lr:.2e} {info.elapsed_s:.0f}s"
            )
        if validation is not None:
            validation(info)

    if checkpoint is not None and Path(checkpoint).exists():
        log(f"[{spec.name}] resuming from the checkpoint {checkpoint}")
    report: TrainReport = train(
        model,
        train_spec,
        train_cases,
        config,
        on_step=_progress,
        checkpoint=None if checkpoint is None else Path(checkpoint),
        checkpoint_every=checkpoint_every,
        extra_state=validation,
    )
    log(
        f"[{spec.name}] trained {report.steps} steps in {report.seconds:.0f}s "
        f"({report.step_seconds_total:.0f}s of steps over all runs; pre-processing "
        f"{report.preprocess_seconds:.0f}s, resumed at step "
        f"{report.resumed_from_step}), final loss {report.final_loss:.4f}, precision "
        f"{report.precision} ({report.precision_reason})"
    )
    del training, train_cases
    if validation is not None and validation.best_state is not None:
        model.load_state_dict(validation.best_state, strict=True)
        log(
            f"[{spec.name}] registering the weights of step {validation.best_step} "
            f"(validation score {validation.best_score:.4f})"
        )

    sets_seeds = [seed] if eval_seeds is None else list(eval_seeds)
    eval_site = eval_profile if eval_profile is not None else profile
    evaluation = evaluate_sets(
        scored,
        spec,
        f"{spec.name}/{version}",
        seeds=sets_seeds,
        eval_cases=eval_cases,
        profile=eval_site,
        log=log,
        refiner=settings,
    )
    metrics = evaluation.combined.as_metrics()
    metrics["train_steps"] = float(report.steps)
    # optimiser steps over every run that continued the checkpoint (a resumed run's own
    # wall time would undercount)
    metrics["train_seconds"] = round(report.step_seconds_total, 1)
    metrics["train_final_loss"] = report.final_loss
    if validation is not None:
        metrics["validation_best_step"] = float(validation.best_step)
        metrics["validation_best_score"] = validation.best_score
    kinds = ", ".join(str(k) for k in recipe.kinds)
    mix = profile_mix(spec.name, profile)
    site_text = "; ".join(
        f"profile {p.name!r}, spacing {p.spacing_mm} mm, matrix {p.matrix}" for p in mix
    )
    origin = (
        ""
        if parent is None
        else f"Fine-tuned from {parent.ref} (weights sha256 {parent.card.weights_sha256}). "
    )
    if stage1 is not None:
        origin = stage1.describe() + origin
    training_data = (
        f"{origin}Synthetic phantoms only ({kinds}; {site_text}"
        f"{', cases alternating between the profiles' if len(mix) > 1 else ''}), "
        f"{cases} cases, phantom seed "
        f"{train_seed}; no patient data. Metrics: {_sets_text(evaluation, sets_seeds)}, "
        "through the clinical inference path with post-processing. Trained with "
        f"models.training.train: {steps} steps x {batch_size} patches, seed {seed}, "
        f"initial learning rate {config.lr:g}, "
        f"class ratios {recipe.class_ratios}"
        f"{', lesion-balanced sampling' if recipe.balance_lesions else ''}"
        f"{f', thin slabs p={thin_slab_probability:g}' if thin_slab_probability else ''}"
        f"{f', blob loss weight {blob_loss_weight:g}' if blob_loss_weight else ''}"
        f"{f', false-blob weight {false_blob_weight:g}' if false_blob_weight else ''}; "
        f"precision {report.precision} ({report.precision_reason})."
    )
    if validation is not None:
        training_data += (
            f" Weights of step {validation.best_step} of {steps}, the best of a validation "
            f"every {validate_every} steps on {validate_cases} other fresh phantoms (seed "
            f"{validation_seed}; score = mean over labels of the per-case Dice, "
            f"{validation.best_score:.4f})."
        )
    options = "" if profile is None else f" --profile {profile_name(spec.name, profile)}"
    if eval_profile is not None:
        options += f" --eval-profile {eval_profile.name}"
    if eval_seeds is not None:
        options += f" --eval-seeds {','.join(map(str, eval_seeds))}"
    if stage1 is not None:
        options += stage1.options()
    if parent is not None:
        options += f" --init-from {parent.card.version}"
    if lr is not None:
        options += f" --lr {lr:g}"
    if config.precision != Precision.AUTO:
        options += f" --precision {config.precision}"
    if thin_slab_probability:
        options += f" --thin-slab-probability {thin_slab_probability:g}"
    if blob_loss_weight:
        options += f" --blob-loss-weight {blob_loss_weight:g}"
    if false_blob_weight:
        options += f" --false-blob-weight {false_blob_weight:g}"
    if validation is not None:
        options += f" --validate-every {validate_every} --validate-cases {validate_cases}"
    if network != (recipe.network if stage1 is None else stage1.network_default):
        options += f" --network {network.name} --filters {','.join(map(str, network.filters))}"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    architecture = network_architecture(train_spec, network)
    preprocessing = preprocessing_for_task(spec)
    parent_version = None if parent is None else parent.card.version
    if stage1 is not None:
        state = cascade_state_dict(stage1.network.state_dict(), state)
        architecture = cascade_architecture(thaw(stage1.bundle.card.architecture), architecture)
        preprocessing = {
            **thaw(stage1.bundle.card.preprocessing),
            REFINER_KEY: stage1.settings.to_dict(),
        }
        parent_version = parent_version or stage1.bundle.card.version
    bundle = registry.add(
        str(spec.name),
        version,
        state,
        name=f"demo-{spec.name}",
        labels=labels_for_task(spec),
        architecture=architecture,
        preprocessing=preprocessing,
        intended_use=DEMO_INTENDED_USE,
        training_data=training_data,
        metrics=metrics,
        parent_version=parent_version,
        source={
            "kind": "demo-weights",
            "command": (
                f"appliance train --task {spec.name} --out <registry> --seed {seed} "
                f"--steps {steps} --cases {cases} --eval-cases {eval_cases} "
                f"--batch-size {batch_size} --version {version}{options}"
            ),
            "synthetic": True,
            "clinical_use": False,
            "precision": str(report.precision),
        },
    )
    log(f"[{spec.name}] wrote {bundle.path} in {time.perf_counter() - start:.0f}s total")
    return bundle


@dataclass(frozen=True, slots=True)
class _Stage1:
    """The registered one-stage model a two-stage model is built on (``--refine-from``)."""

    bundle: ModelBundle
    network: nn.Module
    settings: RefinerSettings
    network_default: NetworkConfig

    @classmethod
    def load(
        cls,
        registry: ModelRegistry,
        spec: TaskSpec,
        version: str,
        settings: RefinerSettings | None,
    ) -> _Stage1:
        recipe = RECIPES[spec.name]
        if recipe.refiner is None or recipe.refiner_network is None:
            raise DemoWeightsError(f"--refine-from: task {spec.name} has no two-stage recipe")
        try:
            bundle = registry.get(str(spec.name), version)
        except BundleNotFoundError as exc:
            raise DemoWeightsError(
                f"--refine-from {version}: no {spec.name} bundle of that version under "
                f"{registry.root}"
            ) from exc
        if bundle.card.refiner is not None or bundle.card.bundle_pipeline is not None:
            raise DemoWeightsError(
                f"--refine-from {bundle.ref}: stage 1 must be a one-stage model of the task's "
                "own pipeline"
            )
        network = registry.load_network(bundle)
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        return cls(bundle, network, settings or recipe.refiner, recipe.refiner_network)

    def describe(self) -> str:
        s = self.settings
        return (
            f"Two-stage model: stage 1 is {self.bundle.ref} (weights sha256 "
            f"{self.bundle.card.weights_sha256}), unchanged; stage 2, the refiner, was trained "
            f"here on a {'x'.join(f'{v:g}' for v in s.target_spacing_mm)} mm grid "
            f"({'x'.join(map(str, s.patch_size))} patches) over the training phantoms cut to "
            f"their truth box + {s.margin_mm:g} mm (+- {REFINER_JITTER_MM:g} mm per side). "
        )

    def options(self) -> str:
        s = self.settings
        return (
            f" --refine-from {self.bundle.card.version}"
            f" --refiner-spacing {','.join(f'{v:g}' for v in s.target_spacing_mm)}"
            f" --refiner-patch {','.join(map(str, s.patch_size))} --margin-mm {s.margin_mm:g}"
        )


def _sets_text(evaluation: SetsEvaluation, seeds: Sequence[int]) -> str:
    sets = ", ".join(str(eval_phantom_seed(s)) for s in seeds)
    return (
        f"{len(seeds) * evaluation.cases_per_set} fresh phantoms of profile "
        f"{evaluation.profile!r} ({len(seeds)} set(s) of {evaluation.cases_per_set}, "
        f"phantom seed(s) {sets}; 95 % intervals by bootstrap over cases)"
    )


def eval_phantom_seed(seed: int) -> int:
    """The phantom generator's seed of evaluation set ``seed`` (never a training seed)."""
    return EVAL_PHANTOM_SEED + 1000 * seed


@dataclass(frozen=True, slots=True)
class SetsEvaluation:
    """A bundle evaluated on several sets of fresh phantoms: one summary per set (keyed by
    the evaluation seed) and the figures of all sets' cases together (``combined``)."""

    bundle: str
    profile: str
    cases_per_set: int
    sets: Mapping[int, EvaluationSummary]
    combined: EvaluationSummary

    def __post_init__(self) -> None:
        if not self.sets:
            raise DemoWeightsError("an evaluation has at least one phantom set")
        if self.combined.cases != sum(s.cases for s in self.sets.values()):
            raise DemoWeightsError("the combined figures must cover every set's cases")

    def to_dict(self) -> dict[str, object]:
        """Every figure (card keys, finite values only) per set and combined."""
        return {
            "bundle": self.bundle,
            "profile": self.profile,
            "cases_per_set": self.cases_per_set,
            "interval": (
                f"95 % percentile bootstrap over cases, {BOOTSTRAP_RESAMPLES} resamples, "
                f"generator seed {BOOTSTRAP_SEED}"
            ),
            "small_lesion": f"equivalent-sphere diameter {LesionSizeBin.SMALL.description}",
            "sets": [
                {"seed": seed, "phantom_seed": eval_phantom_seed(seed), "metrics": s.as_metrics()}
                for seed, s in self.sets.items()
            ],
            "combined": self.combined.as_metrics(),
        }


def evaluate_bundle(
    task: TaskName | str,
    registry_root: Path,
    *,
    version: str | None = None,
    seeds: Sequence[int] = (0,),
    eval_cases: int = 10,
    profile: Profiles | None = None,
    log: Callable[[str], None] = print,
) -> SetsEvaluation:
    """Re-run the fresh-phantom evaluation of a registered bundle (the latest version by
    default) on one set of ``eval_cases`` phantoms per seed in ``seeds``, each the set
    :func:`train_demo_weights` evaluates on for that seed; logs one table per set and,
    for several sets, the combined figures."""
    spec = get_task(task)
    if not seeds or len(set(seeds)) != len(seeds):
        raise DemoWeightsError(f"--seed: need one or more distinct seeds, not {list(seeds)}")
    if eval_cases < 1:
        raise DemoWeightsError(f"--eval-cases must be >= 1, not {eval_cases}")
    registry = ModelRegistry(Path(registry_root))
    bundle = (
        registry.get(str(spec.name), version)
        if version is not None
        else registry.latest(str(spec.name))
    )
    if bundle is None:
        raise FileNotFoundError(f"no bundle for {spec.name} under {registry_root}")
    model = registry.load_network(bundle)
    return evaluate_sets(
        model,
        spec,
        str(bundle.ref),
        seeds=seeds,
        eval_cases=eval_cases,
        profile=profile,
        log=log,
        refiner=bundle.card.refiner,
    )


def evaluate_sets(
    model: nn.Module,
    spec: TaskSpec,
    what: str,
    *,
    seeds: Sequence[int],
    eval_cases: int,
    profile: Profiles | None = None,
    log: Callable[[str], None] = print,
    refiner: RefinerSettings | None = None,
) -> SetsEvaluation:
    """``model`` (called ``what`` in the log) on one set of ``eval_cases`` fresh phantoms
    of ``profile`` (default: the recipe's) per evaluation seed in ``seeds``, through
    :func:`score_cases`; logs one table per set and, for several sets, the combined
    figures."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise DemoWeightsError(f"--seed: need one or more distinct seeds, not {list(seeds)}")
    if eval_cases < 1:
        raise DemoWeightsError(f"--eval-cases must be >= 1, not {eval_cases}")
    site_name = profile_name(spec.name, profile)
    every: list[CaseMetrics] = []
    sets: dict[int, EvaluationSummary] = {}
    for seed in seeds:
        fresh = phantom_cases(
            spec.name, seed=eval_phantom_seed(seed), cases=eval_cases, profile=profile
        )

        def _case(number: int, metrics: CaseMetrics, seconds: float, seed: int = seed) -> None:
            dice_text = " ".join(f"{k}={v:.3f}" for k, v in metrics.dice.items())
            log(f"[{spec.name}] set {seed} case {number}: {dice_text} ({seconds:.1f}s)")

        scored = score_cases(model, spec, fresh, on_case=_case, refiner=refiner)
        del fresh
        every.extend(scored)
        sets[seed] = summarize(scored)
        log(
            f"[{spec.name}] {what} on {eval_cases} fresh phantoms (profile "
            f"{site_name!r}, set {seed}, phantom seed {eval_phantom_seed(seed)})"
        )
        log(sets[seed].format_table())
    combined = sets[seeds[0]] if len(seeds) == 1 else summarize(every)
    if len(seeds) > 1:
        log(
            f"[{spec.name}] {what} combined: {len(every)} phantoms of "
            f"{len(seeds)} sets (seeds {', '.join(map(str, seeds))})"
        )
        log(combined.format_table())
    return SetsEvaluation(what, site_name, eval_cases, MappingProxyType(sets), combined)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance train", description="Train demo weights on synthetic phantoms."
    )
    parser.add_argument("--task", required=True, choices=[str(t) for t in TaskName])
    parser.add_argument("--out", required=True, type=Path, help="model registry root")
    parser.add_argument(
        "--seed",
        type=int,
        action="append",
        default=None,
        help=(
            "training seed (default 0); with --evaluate-only the evaluation set, and "
            "repeated (--seed 0 --seed 1) several sets"
        ),
    )
    parser.add_argument(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="with --evaluate-only: evaluation sets, comma-separated (e.g. 0,1)",
    )
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument(
        "--eval-cases", type=int, default=10, help="fresh phantoms per evaluation set"
    )
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--version", default=DEMO_VERSION)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--profile",
        default=None,
        help=(
            "phantom profile (default: the task's demo profile); comma-separated names train "
            "on a mix (cases alternate between them)"
        ),
    )
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="VERSION",
        help="fine-tune: start from this registered version of the task in --out",
    )
    parser.add_argument("--lr", type=float, default=None, help="initial learning rate")
    parser.add_argument(
        "--network",
        choices=[str(a) for a in Architecture],
        default=None,
        help="MONAI architecture (default: the task's shipped UNet; federated runs train UNets)",
    )
    parser.add_argument(
        "--filters",
        default=None,
        help=(
            "feature channels per resolution level, comma-separated (2 to 5 levels; "
            "default: the task's, 16,32,64,128 or for glioma_brats 8,16,32,64)"
        ),
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="PATH",
        help=(
            "training checkpoint file: written every --checkpoint-every steps; rerunning the "
            "same command resumes from it (a different run refuses it)"
        ),
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEFAULT_CHECKPOINT_EVERY,
        metavar="N",
        help=f"steps between checkpoints (default {DEFAULT_CHECKPOINT_EVERY})",
    )
    parser.add_argument(
        "--log",
        type=Path,
        default=None,
        metavar="PATH",
        help="append timestamped progress lines (step, loss, lr, seconds) to this file",
    )
    parser.add_argument(
        "--precision",
        choices=[str(p) for p in (Precision.AUTO, Precision.FP32, Precision.BF16)],
        default=str(Precision.AUTO),
        help=(
            "auto (default): bf16 autocast on a bf16 GPU or a CPU with native bf16 "
            "(avx512_bf16/amx_bf16), fp16 on other GPUs, else fp32"
        ),
    )
    parser.add_argument(
        "--thin-slab-probability",
        type=float,
        default=0.0,
        metavar="P",
        help="share of patches cut to a thin slab of 3+ slices with replicated edges (0-1)",
    )
    parser.add_argument(
        "--blob-loss-weight",
        type=float,
        default=0.0,
        metavar="W",
        help=(
            "add a Dice term per lesion instance (blob loss, Kofler et al. 2023) with this "
            "weight, so small lesions count as much as large ones (default 0: off)"
        ),
    )
    parser.add_argument(
        "--false-blob-weight",
        type=float,
        default=0.0,
        metavar="W",
        help=(
            "add the mean probability over each predicted lesion component that touches no "
            "lesion, every false component counting the same, with this weight (default 0: off)"
        ),
    )
    parser.add_argument(
        "--validate-every",
        type=int,
        default=0,
        metavar="N",
        help="score the weights every N steps on --validate-cases fresh phantoms; keep the best",
    )
    parser.add_argument(
        "--validate-cases",
        type=int,
        default=0,
        metavar="K",
        help="validation phantoms (a seed of their own; with --validate-every)",
    )
    parser.add_argument(
        "--eval-profile",
        default=None,
        metavar="P",
        help="training: the final evaluation's phantom profile (default: --profile's)",
    )
    parser.add_argument(
        "--eval-seeds",
        default=None,
        metavar="S,S,...",
        help=(
            "training: the final evaluation's sets, comma-separated (default: the training "
            "seed's set); the card records all sets' figures together"
        ),
    )
    parser.add_argument(
        "--refine-from",
        default=None,
        metavar="VERSION",
        help=(
            "train a two-stage model: this registered one-stage version is stage 1 (unchanged), "
            "the network trained is stage 2, the refiner (docs/models.md)"
        ),
    )
    parser.add_argument(
        "--refiner-spacing",
        default=None,
        metavar="X,Y,Z",
        help="with --refine-from: the refiner's grid in mm (default: the task's, 1,1,1.5)",
    )
    parser.add_argument(
        "--refiner-patch",
        default=None,
        metavar="X,Y,Z",
        help="with --refine-from: the refiner's patch size (default: the task's, 64,64,48)",
    )
    parser.add_argument(
        "--margin-mm",
        type=float,
        default=None,
        metavar="MM",
        help="with --refine-from: margin around stage 1's labels (default: the task's, 10)",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="do not train: evaluate the bundle already in --out on fresh phantoms",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="with --evaluate-only: write every figure (per set and combined) to PATH",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``appliance train`` (and ``python -m models.demo_weights``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        profile = None if args.profile is None else named_profiles(args.task, args.profile)
        eval_profile = (
            None if args.eval_profile is None else named_profile(args.task, args.eval_profile)
        )
    except DemoWeightsError as exc:
        parser.error(str(exc))
    eval_seeds = None
    if args.eval_seeds is not None:
        try:
            eval_seeds = [int(s) for s in str(args.eval_seeds).split(",")]
        except ValueError:
            parser.error(f"--eval-seeds must be comma-separated integers, not {args.eval_seeds!r}")
        if len(set(eval_seeds)) != len(eval_seeds) or any(s < 0 for s in eval_seeds):
            parser.error(f"--eval-seeds: distinct seeds >= 0, not {eval_seeds}")
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a finite number > 0, not {args.lr}")
    if not (math.isfinite(args.thin_slab_probability) and 0.0 <= args.thin_slab_probability <= 1.0):
        parser.error(f"--thin-slab-probability must be in [0, 1], not {args.thin_slab_probability}")
    if args.checkpoint_every < 1:
        parser.error(f"--checkpoint-every must be >= 1, not {args.checkpoint_every}")
    for option, value in (
        ("--blob-loss-weight", args.blob_loss_weight),
        ("--false-blob-weight", args.false_blob_weight),
    ):
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"{option} must be a finite number >= 0, not {value}")
    if args.validate_every < 0 or args.validate_cases < 0:
        parser.error("--validate-every and --validate-cases must be >= 0")
    if (args.validate_every > 0) != (args.validate_cases > 0):
        parser.error("--validate-every and --validate-cases go together (both > 0)")
    try:
        refiner = _refiner_from_args(args)
    except SpecError as exc:
        parser.error(f"--refiner-spacing/--refiner-patch/--margin-mm: {exc}")
    try:
        network = _network_from_args(args, refiner)
    except NetworkConfigError as exc:
        parser.error(f"--network/--filters: {exc}")
    seeds = _seeds_from_args(args, parser)
    if args.eval_cases < 1:
        parser.error(f"--eval-cases must be >= 1, not {args.eval_cases}")
    if args.evaluate_only:
        result = evaluate_bundle(
            args.task,
            args.out,
            version=args.version,
            seeds=seeds,
            eval_cases=args.eval_cases,
            profile=profile,
            log=lambda line: print(line, flush=True),
        )
        if args.eval_profile is not None or args.eval_seeds is not None:
            parser.error("--eval-profile/--eval-seeds are for training; use --profile/--seeds")
        if args.json is not None:
            args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
            print(f"wrote {args.json}", flush=True)
        return 0
    if len(seeds) != 1:
        parser.error("--seed/--seeds: training takes one seed; several only with --evaluate-only")
    if args.json is not None:
        parser.error("--json is for --evaluate-only (appliance evaluate)")
    args.seed = seeds[0]
    try:
        _train_from_args(args, profile, network, refiner, eval_profile, eval_seeds)
    except (DemoWeightsError, ProgressError) as exc:
        parser.error(str(exc))
    except TrainingError as exc:
        where = f"--checkpoint {args.checkpoint}: " if args.checkpoint is not None else ""
        parser.exit(1, f"{parser.prog}: error: {where}{exc}\n")
    return 0


def _seeds_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[int]:
    """``--seed`` (repeatable) and ``--seeds S,S`` together, in order; default ``[0]``."""
    seeds = list(args.seed or [])
    if args.seeds is not None:
        try:
            seeds += [int(s) for s in str(args.seeds).split(",")]
        except ValueError:
            parser.error(f"--seeds must be comma-separated integers, not {args.seeds!r}")
    if not seeds:
        seeds = [0]
    if len(set(seeds)) != len(seeds):
        parser.error(f"--seed/--seeds: each seed once, not {seeds}")
    if any(s < 0 for s in seeds):
        parser.error(f"--seed/--seeds must be >= 0, not {seeds}")
    return seeds


def _refiner_from_args(args: argparse.Namespace) -> RefinerSettings | None:
    """``--refiner-spacing``/``--refiner-patch``/``--margin-mm`` over the recipe's refiner
    (None without ``--refine-from``; then they are refused)."""
    given = [args.refiner_spacing, args.refiner_patch, args.margin_mm]
    if args.refine_from is None:
        if any(v is not None for v in given):
            raise SpecError("they need --refine-from")
        return None
    base = RECIPES[TaskName(args.task)].refiner
    if base is None:
        raise SpecError(f"task {args.task} has no two-stage recipe")

    def triple(text: str | None, current: tuple[Any, ...], kind: type) -> tuple[Any, ...]:
        if text is None:
            return current
        try:
            return tuple(kind(v) for v in str(text).split(","))
        except ValueError as exc:
            raise SpecError(f"{text!r} is not three comma-separated numbers") from exc

    return RefinerSettings(
        triple(args.refiner_spacing, base.target_spacing_mm, float),
        triple(args.refiner_patch, base.patch_size, int),
        base.margin_mm if args.margin_mm is None else args.margin_mm,
    )


def _network_from_args(
    args: argparse.Namespace, refiner: RefinerSettings | None = None
) -> NetworkConfig:
    """``--network``/``--filters`` (each defaulting to the task recipe's, or with
    ``--refine-from`` to its refiner's) as a config that fits the patch size."""
    recipe = RECIPES[TaskName(args.task)]
    default = recipe.network
    spec = get_task(args.task)
    if refiner is not None and recipe.refiner_network is not None:
        default, spec = recipe.refiner_network, refiner_spec(spec, refiner)
    text = ",".join(map(str, default.filters)) if args.filters is None else str(args.filters)
    try:
        filters = tuple(int(f) for f in text.split(","))
    except ValueError as exc:
        raise NetworkConfigError(f"filters must be integers, not {args.filters!r}") from exc
    name = default.name if args.network is None else Architecture(args.network)
    if args.network is None and args.filters is None:
        network = default
    else:
        network = NetworkConfig(name=name, filters=filters)
    build_network(spec, network)  # MONAI's own checks, and the patch must fit
    return network


def _train_from_args(
    args: argparse.Namespace,
    profile: Profiles | None,
    network: NetworkConfig,
    refiner: RefinerSettings | None = None,
    eval_profile: SiteProfile | None = None,
    eval_seeds: Sequence[int] | None = None,
) -> None:
    with TrainingProgress(
        prefix=f"[{args.task}] ", stream=sys.stderr, log_path=args.log
    ) as progress:

        def log(line: str) -> None:
            progress.note(line)
            print(line, flush=True)

        train_demo_weights(
            args.task,
            args.out,
            seed=args.seed,
            cases=args.cases,
            steps=args.steps,
            eval_cases=args.eval_cases,
            batch_size=args.batch_size,
            version=args.version,
            network=network,
            profile=profile,
            init_from=args.init_from,
            lr=args.lr,
            log=log,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            precision=args.precision,
            thin_slab_probability=args.thin_slab_probability,
            validate_every=args.validate_every,
            validate_cases=args.validate_cases,
            progress=progress,
            refine_from=args.refine_from,
            refiner=refiner,
            eval_profile=eval_profile,
            eval_seeds=eval_seeds,
            blob_loss_weight=args.blob_loss_weight,
            false_blob_weight=args.false_blob_weight,
        )


if __name__ == "__main__":
    raise SystemExit(main())
