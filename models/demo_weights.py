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
bundle already registered (the quality check of issue 3). Each run:

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

``liver_ct`` 0.2.0 is 0.1.0 fine-tuned on the same patients drawn on the model's own grid
(2 mm slices, 1.5 mm pixels, profile ``ct_fine``) instead of 2.5 mm voxels, where a 5 mm
lesion spans two voxels. Being the highest version, it is the one a first start
activates; 0.1.0 stays registered for rollback.

Results depend on the seed (and, through floating point, slightly on the CPU's math
library); the numbers measured when the shipped bundles were made are in their cards.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ModelsError, NetworkConfigError
from .evaluation import CaseMetrics, EvaluationSummary, evaluate_case, summarize
from .inference import segment
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
from .registry import BundleNotFoundError, ModelBundle, ModelRegistry
from .tasks import TaskName, TaskSpec, get_task
from .training import StepInfo, TrainConfig, TrainingCase, TrainReport, train

logger = logging.getLogger(__name__)

DEMO_VERSION = "0.1.0"

#: Seeds of the phantom generator: training and evaluation never share one.
TRAIN_PHANTOM_SEED = 7001
EVAL_PHANTOM_SEED = 8001


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


RECIPES: dict[TaskName, DemoRecipe] = {
    TaskName.LIVER_CT: DemoRecipe(
        kinds=(PhantomKind.CT_ABDOMEN,),
        profile=CT_DEFAULT,
        class_ratios=(0.3, 0.3, 0.4),  # background, liver, tumour
        crop_foreground=True,
        balance_lesions=True,
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


def phantom_cases(
    task: TaskName | str, *, seed: int, cases: int, profile: SiteProfile | None = None
) -> list[tuple[TrainingCase, np.ndarray]]:
    """``cases`` phantoms for ``task`` from ``profile`` (default: the recipe's) reseeded
    with ``seed``: ``(case, lesion_map)`` pairs."""
    recipe = RECIPES[TaskName(task)]
    base = profile if profile is not None else recipe.profile
    site = replace(base, seed=seed)
    out = []
    for k in range(cases):
        kind = recipe.kinds[k % len(recipe.kinds)]
        p = generate_phantom(kind, site, k)
        out.append((TrainingCase(p.image, p.labels, p.affine_lps), p.lesion_map))
    return out


def evaluate_model(
    model: nn.Module,
    spec: TaskSpec,
    cases: Sequence[tuple[TrainingCase, np.ndarray]],
    *,
    on_case: Callable[[int, CaseMetrics, float], None] | None = None,
    device: str | None = None,
) -> EvaluationSummary:
    """Segment each case through :func:`models.inference.segment` (on CUDA, with its
    autocast, where there is a GPU, unless ``device`` says otherwise) and score it."""
    results: list[CaseMetrics] = []
    for number, (case, lesion_map) in enumerate(cases):
        start = time.perf_counter()
        mask = segment(model, spec, case.image, case.affine, device=device).mask
        metrics = evaluate_case(mask, case.labels, case.affine, spec, lesion_map=lesion_map)
        results.append(metrics)
        if on_case is not None:
            on_case(number, metrics, time.perf_counter() - start)
    return summarize(results)


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
    profile: SiteProfile | None = None,
    init_from: str | None = None,
    lr: float | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    log: Callable[[str], None] = print,
) -> ModelBundle:
    """Generate phantoms, train, evaluate on fresh phantoms, register the bundle
    ``task/version`` under ``out_registry_root`` (see the module docstring).

    ``init_from``: a version of the same task in that registry whose (verified) weights
    the training starts from instead of a random initialisation - fine-tuning; the new
    card names it as its parent. ``lr``: the initial learning rate (default: training's).
    ``network``: default the recipe's.
    """
    spec = get_task(task)
    recipe = RECIPES[spec.name]
    if network is None:
        network = recipe.network
    registry = ModelRegistry(Path(out_registry_root))
    parent = None
    if init_from is not None:
        try:
            parent = registry.get(str(spec.name), init_from)
        except BundleNotFoundError as exc:
            raise DemoWeightsError(
                f"--init-from {init_from}: no {spec.name} bundle of that version under "
                f"{out_registry_root}"
            ) from exc
        if thaw(parent.card.architecture) != network_architecture(spec, network):
            raise DemoWeightsError(
                f"--init-from {parent.ref}: its architecture differs from the network being trained"
            )
    start = time.perf_counter()
    train_seed = TRAIN_PHANTOM_SEED + 1000 * seed
    training = phantom_cases(spec.name, seed=train_seed, cases=cases, profile=profile)
    log(f"[{spec.name}] generated {cases} training phantoms in {time.perf_counter() - start:.1f}s")

    torch.manual_seed(seed)
    model = build_network(spec, network)
    if parent is not None:
        model.load_state_dict(registry.load_state_dict(parent), strict=True)
        log(f"[{spec.name}] starting from {parent.ref} (sha256 {parent.card.weights_sha256[:12]})")
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        class_ratios=recipe.class_ratios,
        crop_foreground=recipe.crop_foreground,
        balance_lesions=recipe.balance_lesions,
    )
    if lr is not None:
        config = replace(config, lr=lr)

    def _progress(info: StepInfo) -> None:
        if on_step is not None:
            on_step(info)
        if info.step % 25 == 0 or info.step == info.steps:
            log(
                f"[{spec.name}] step {info.step}/{info.steps} loss {info.loss:.4f} "
                f"lr {info.lr:.2e} {info.elapsed_s:.0f}s"
            )

    report: TrainReport = train(model, spec, [c for c, _ in training], config, on_step=_progress)
    log(
        f"[{spec.name}] trained {report.steps} steps in {report.seconds:.0f}s "
        f"(pre-processing {report.preprocess_seconds:.0f}s), final loss {report.final_loss:.4f}"
    )
    del training

    eval_seed = EVAL_PHANTOM_SEED + 1000 * seed
    fresh = phantom_cases(spec.name, seed=eval_seed, cases=eval_cases, profile=profile)

    def _case(number: int, metrics: CaseMetrics, seconds: float) -> None:
        dice_text = " ".join(f"{k}={v:.3f}" for k, v in metrics.dice.items())
        log(f"[{spec.name}] eval case {number}: {dice_text} ({seconds:.1f}s)")

    summary = evaluate_model(model, spec, fresh, on_case=_case)
    log(summary.format_table())
    metrics = summary.as_metrics()
    metrics["train_steps"] = float(report.steps)
    metrics["train_seconds"] = round(report.seconds, 1)
    metrics["train_final_loss"] = report.final_loss
    kinds = ", ".join(str(k) for k in recipe.kinds)
    site = profile if profile is not None else recipe.profile
    origin = (
        ""
        if parent is None
        else f"Fine-tuned from {parent.ref} (weights sha256 {parent.card.weights_sha256}). "
    )
    training_data = (
        f"{origin}Synthetic phantoms only ({kinds}; profile {site.name!r}, spacing "
        f"{site.spacing_mm} mm, matrix {site.matrix}), {cases} cases, phantom seed "
        f"{train_seed}; no patient data. Metrics: {eval_cases} fresh phantoms (seed "
        f"{eval_seed}), via models.inference.segment with post-processing. Trained with "
        f"models.training.train: {steps} steps x {batch_size} patches, seed {seed}, "
        f"initial learning rate {config.lr:g}, "
        f"class ratios {recipe.class_ratios}"
        f"{', lesion-balanced sampling' if recipe.balance_lesions else ''}."
    )
    options = "" if profile is None else f" --profile {site.name}"
    if parent is not None:
        options += f" --init-from {parent.card.version}"
    if lr is not None:
        options += f" --lr {lr:g}"
    if network != recipe.network:
        options += f" --network {network.name} --filters {','.join(map(str, network.filters))}"
    bundle = registry.add(
        str(spec.name),
        version,
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        name=f"demo-{spec.name}",
        labels=labels_for_task(spec),
        architecture=network_architecture(spec, network),
        preprocessing=preprocessing_for_task(spec),
        intended_use=DEMO_INTENDED_USE,
        training_data=training_data,
        metrics=metrics,
        parent_version=None if parent is None else parent.card.version,
        source={
            "kind": "demo-weights",
            "command": (
                f"appliance train --task {spec.name} --out <registry> --seed {seed} "
                f"--steps {steps} --cases {cases} --eval-cases {eval_cases} "
                f"--batch-size {batch_size} --version {version}{options}"
            ),
            "synthetic": True,
            "clinical_use": False,
        },
    )
    log(f"[{spec.name}] wrote {bundle.path} in {time.perf_counter() - start:.0f}s total")
    return bundle


def evaluate_bundle(
    task: TaskName | str,
    registry_root: Path,
    *,
    version: str | None = None,
    seed: int = 0,
    eval_cases: int = 10,
    profile: SiteProfile | None = None,
    log: Callable[[str], None] = print,
) -> EvaluationSummary:
    """Re-run the fresh-phantom evaluation of a registered bundle (the latest version by
    default) with the same phantoms :func:`train_demo_weights` used for ``seed``."""
    spec = get_task(task)
    registry = ModelRegistry(Path(registry_root))
    bundle = (
        registry.get(str(spec.name), version)
        if version is not None
        else registry.latest(str(spec.name))
    )
    if bundle is None:
        raise FileNotFoundError(f"no bundle for {spec.name} under {registry_root}")
    model = registry.load_network(bundle)
    fresh = phantom_cases(
        spec.name, seed=EVAL_PHANTOM_SEED + 1000 * seed, cases=eval_cases, profile=profile
    )

    def _case(number: int, metrics: CaseMetrics, seconds: float) -> None:
        dice_text = " ".join(f"{k}={v:.3f}" for k, v in metrics.dice.items())
        log(f"[{spec.name}] eval case {number}: {dice_text} ({seconds:.1f}s)")

    summary = evaluate_model(model, spec, fresh, on_case=_case)
    site = profile if profile is not None else RECIPES[spec.name].profile
    log(f"[{spec.name}] {bundle.ref} on {eval_cases} fresh phantoms (profile {site.name!r})")
    log(summary.format_table())
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appliance train", description="Train demo weights on synthetic phantoms."
    )
    parser.add_argument("--task", required=True, choices=[str(t) for t in TaskName])
    parser.add_argument("--out", required=True, type=Path, help="model registry root")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=900)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--eval-cases", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--version", default=DEMO_VERSION)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument(
        "--profile", default=None, help="phantom profile (default: the task's demo profile)"
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
        "--evaluate-only",
        action="store_true",
        help="do not train: evaluate the bundle already in --out on fresh phantoms",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``appliance train`` (and ``python -m models.demo_weights``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        profile = None if args.profile is None else named_profile(args.task, args.profile)
    except DemoWeightsError as exc:
        parser.error(str(exc))
    if args.lr is not None and not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr must be a finite number > 0, not {args.lr}")
    try:
        network = _network_from_args(args)
    except NetworkConfigError as exc:
        parser.error(f"--network/--filters: {exc}")
    if args.evaluate_only:
        evaluate_bundle(
            args.task,
            args.out,
            version=args.version,
            seed=args.seed,
            eval_cases=args.eval_cases,
            profile=profile,
            log=lambda line: print(line, flush=True),
        )
        return 0
    try:
        _train_from_args(args, profile, network)
    except DemoWeightsError as exc:
        parser.error(str(exc))
    return 0


def _network_from_args(args: argparse.Namespace) -> NetworkConfig:
    """``--network``/``--filters`` (each defaulting to the task recipe's) as a config
    that fits the task's patch size."""
    default = RECIPES[TaskName(args.task)].network
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
    build_network(get_task(args.task), network)  # MONAI's own checks, and the patch must fit
    return network


def _train_from_args(
    args: argparse.Namespace, profile: SiteProfile | None, network: NetworkConfig
) -> None:
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
        log=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    raise SystemExit(main())
