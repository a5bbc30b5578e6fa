"""The federated benchmark's report: seeds aggregated, targets decided, files written.

From the per-(task, seed, method) records of :func:`appliance.federation.simulation.run.
simulate` it writes, under the output directory, for config ``<name>``:

- ``federation_<name>.json``: every figure (mean and std over seeds), the decisions and
  the records;
- ``federation_<name>.md``: the exact command and wall time, the tables (per method:
  Dice per site and label, lesion recall per size bin, false positives per case, HD95
  with the cases where it is infinite, bytes, wall time), the six targets decided with
  their 95 % intervals (:mod:`appliance.federation.simulation.decisions`: met, missed or
  undecided) and, when ``benchmarks/federation/<name>.discussion.md`` exists, that
  discussion;
- ``federation_<name>_dice.png``: Dice per method and site; ``federation_<name>_recall.png``:
  lesion recall by size bin per method; ``federation_<name>_rounds.png`` (only when the
  runs scored every round): Dice (mean over sites) against the local steps each site has
  spent.

Dice is the mean over a site's held-out cases of the mean over the task's labels; a
method's overall Dice is the mean over sites (each hospital counts once). Small-lesion
Dice covers lesions below :data:`models.lesion_size.SMALL_LESION_DIAMETER_MM`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from appliance.federation.simulation.config import Method, SimConfig, config_dir
from appliance.federation.simulation.decisions import (
    Decision,
    TargetContext,
    decide_targets,
)
from models.lesion_size import SMALL_LESION_DIAMETER_MM, LesionSizeBin


def _stat(values: Sequence[float | None]) -> list[float] | None:
    """``[mean, std, n]`` of the values that exist (std 0 for one value)."""
    present = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not present:
        return None
    return [float(np.mean(present)), float(np.std(present)), float(len(present))]


def _mean(stat: list[float] | None) -> float | None:
    return None if stat is None else stat[0]


def _site_small(record: Mapping[str, Any]) -> float | None:
    """Small-lesion Dice over all sites' held-out cases with a small lesion."""
    total = weight = 0.0
    for site in record["sites"].values():
        if site["small_lesion_dice"] is not None and site["small_lesion_cases"]:
            total += site["small_lesion_dice"] * site["small_lesion_cases"]
            weight += site["small_lesion_cases"]
    return total / weight if weight else None


def _curve(records: Sequence[Mapping[str, Any]], steps_per_site: int) -> list[list[float]]:
    """``[[local steps per site, mean Dice, std], ...]`` over seeds (mean over sites)."""
    per_seed: list[list[tuple[float, float]]] = []
    for record in records:
        history = [h for h in record["history"] if h["sites"]]
        if not history:
            continue
        step = steps_per_site / len(history)
        per_seed.append(
            [
                ((i + 1) * step, float(np.mean(list(h["sites"].values()))))
                for i, h in enumerate(history)
            ]
        )
    if not per_seed:
        return []
    length = min(len(c) for c in per_seed)
    out = []
    for i in range(length):
        values = [c[i][1] for c in per_seed]
        out.append([per_seed[0][i][0], float(np.mean(values)), float(np.std(values))])
    return out


def _recall(sites: Sequence[Mapping[str, Any]], size_bin: str) -> float | None:
    lesions = sum(int(s.get("lesions", {}).get(size_bin, 0)) for s in sites)
    found = sum(int(s.get("detected", {}).get(size_bin, 0)) for s in sites)
    return found / lesions if lesions else None


def _fp_per_case(sites: Sequence[Mapping[str, Any]]) -> float | None:
    if not all("false_positive_components" in s for s in sites):
        return None
    cases = sum(int(s["cases"]) for s in sites)
    return sum(int(s["false_positive_components"]) for s in sites) / cases if cases else None


def summarise_method(records: Sequence[Mapping[str, Any]], steps_per_site: int) -> dict[str, Any]:
    sites = sorted(records[0]["sites"])
    labels = sorted(records[0]["sites"][sites[0]]["dice"])
    bins = [b.value for b in LesionSizeBin]
    out_sites: dict[str, Any] = {}
    for site in sites:
        rows = [r["sites"][site] for r in records]
        out_sites[site] = {
            "recall": {b: _stat([_recall([r], b) for r in rows]) for b in bins},
            "lesions": {b: int(sum(r.get("lesions", {}).get(b, 0) for r in rows)) for b in bins},
            "false_positives_per_case": _stat([_fp_per_case([r]) for r in rows]),
            "dice_mean": _stat([r["dice_mean"] for r in rows]),
            "dice": {lab: _stat([r["dice"][lab] for r in rows]) for lab in labels},
            "small_lesion_dice": _stat([r["small_lesion_dice"] for r in rows]),
            "hd95_mm": {lab: _stat([r["hd95_mm"][lab] for r in rows]) for lab in labels},
            "hd95_missed": {lab: int(sum(r["hd95_missed"][lab] for r in rows)) for lab in labels},
            "bytes_sent": float(np.mean([rec["bytes_sent"][site] for rec in records])),
            "bytes_received": float(np.mean([rec["bytes_received"][site] for rec in records])),
        }
    per_seed_mean = [float(np.mean([r["sites"][s]["dice_mean"] for s in sites])) for r in records]
    return {
        "seeds": [r["seed"] for r in records],
        "sites": out_sites,
        "mean": {
            "dice_mean": _stat(per_seed_mean),
            "dice": {
                lab: _stat(
                    [float(np.mean([r["sites"][s]["dice"][lab] for s in sites])) for r in records]
                )
                for lab in labels
            },
            "small_lesion_dice": _stat([_site_small(r) for r in records]),
            "recall": {
                b: _stat([_recall(list(r["sites"].values()), b) for r in records]) for b in bins
            },
            "false_positives_per_case": _stat(
                [_fp_per_case(list(r["sites"].values())) for r in records]
            ),
            "hd95_missed": {
                lab: int(sum(r["sites"][s]["hd95_missed"][lab] for r in records for s in sites))
                for lab in labels
            },
            "hd95_mm": {
                lab: _stat(
                    [_mean(_stat([r["sites"][s]["hd95_mm"][lab] for s in sites])) for r in records]
                )
                for lab in labels
            },
        },
        "wall_s": _stat([r["wall_s"] for r in records]),
        "curve": _curve(records, steps_per_site),
    }


def target_context(config: SimConfig, task: str) -> TargetContext:
    return TargetContext(
        sites=tuple(site.preset for site in config.sites),
        federated=tuple(m.value for m in config.methods if m.federated),
        most_shifted_site=config.task_setup[task].most_shifted_site,
        smallest_site=config.smallest_site,
        methods=tuple(m.value for m in config.methods),
    )


def check_targets(
    config: SimConfig, task: str, records: Sequence[Mapping[str, Any]]
) -> list[Decision]:
    """The six targets of one task, decided on its records (every seed and method)."""
    rows = [r for r in records if r["task"] == task]
    return decide_targets(rows, target_context(config, task))


def summarise(config: SimConfig, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    for task in config.tasks:
        methods: dict[str, Any] = {}
        for method in config.methods:
            rows = [r for r in records if r["task"] == task and r["method"] == method.value]
            if rows:
                rows = sorted(rows, key=lambda r: int(r["seed"]))
                methods[method.value] = summarise_method(rows, config.steps_per_site)
        tasks[task] = {
            "methods": methods,
            "targets": [t.to_dict() for t in check_targets(config, task, records)],
        }
    return tasks


# --- files ------------------------------------------------------------------------------


def _fmt(stat: list[float] | None, digits: int = 3) -> str:
    if stat is None:
        return "n/a"
    if stat[2] > 1:
        return f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"
    return f"{stat[0]:.{digits}f}"


def _mb(value: float) -> str:
    return f"{value / 1e6:.2f}"


def _site_description(preset: str) -> str:
    from models.site_distribution import site_hospital

    return site_hospital(preset).description


def _network(config: SimConfig, task: str) -> str:
    initial = config.task_setup[task].initial
    if initial is None:
        return (
            f"from scratch: MONAI UNet {list(config.filters)}, {config.res_units} residual "
            f"unit(s), {config.norm} norm"
        )
    c = initial.run_config
    kind = "DynUNet" if c.get("net-class") == "dynunet" else "UNet"
    what = "the refiner of the two-stage model" if initial.two_stage else "the model"
    text = (
        f'fine-tuning {what} {initial.ref} (`initial = "{initial.source}"`; {kind} '
        f"filters {c['net-filters']}, {c['net-norm']} norm)"
    )
    if initial.two_stage:
        text += (
            f"; its locator is not trained, every method is scored through the whole "
            f"two-stage inference (margin {float(c['refiner-margin']):g} mm)"
        )
    return text


def _number(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value.replace("inf", "∞")
    return f"{value:+.{digits}f}"


def _decision_rows(decision: Mapping[str, Any], indent: str = "") -> list[str]:
    diff = decision.get("difference") or {}
    interval = (
        f"[{_number(diff.get('low'))}, {_number(diff.get('high'))}]" if diff.get("n") else "n/a"
    )
    verdict = decision["verdict"]
    shown = f"**{verdict}**" if not indent else verdict
    rows = [
        f"| {indent}{decision['name']} | {shown} | {_number(diff.get('mean'))} | {interval} | "
        f"{diff.get('n', '')} | {decision.get('measure', '')} | {decision.get('note', '')} |"
    ]
    for part in decision.get("parts", []):
        rows += _decision_rows(part, indent="&nbsp;&nbsp;↳ ")
    return rows


def render_markdown(
    config: SimConfig,
    tasks: Mapping[str, Any],
    command: str,
    plots: Mapping[str, str],
    *,
    wall_s: float | None = None,
    precision: str = "",
) -> str:
    bins = list(LesionSizeBin)
    lines = [
        f"# Federated benchmark: `{config.name}`",
        "",
        f"Made with `{command}` on {datetime.now(UTC).strftime('%Y-%m-%d')}"
        f" ({config.device.upper()}"
        + (f", training precision {precision}" if precision else "")
        + ")"
        + (f" in {wall_s / 60:.1f} min wall time" if wall_s is not None else "")
        + f". {config.description}".rstrip(),
        "",
        f"Seeds {', '.join(str(s) for s in config.seeds)}: each figure is the mean ± std over "
        f"the seeds (a seed changes the phantom patients, the initial weights of a run from "
        f"scratch and the sampling). Every site spends the same budget under every method: "
        f"{config.rounds} rounds × {config.local_steps} local optimiser steps "
        f"(batch {config.batch_size}, lr {config.lr:g}); centralised training spends all "
        f"sites' steps on the pooled data"
        + (
            "; `pretrained` is the initial model without any step"
            if Method.PRETRAINED in config.methods
            else ""
        )
        + ". Dice: mean over a site's held-out cases of the mean over the task's labels, "
        "through the inference the site would deploy; a method's Dice is the mean over "
        "sites. Lesion recall: share of the truth lesions a predicted component overlaps, "
        "pooled over the sites' held-out cases, per size bin (equivalent-sphere diameter, "
        "models.lesion_size). FP/case: predicted lesion components touching no lesion. "
        "HD95: mean over the cases where it is finite, with the cases where a label was "
        "missed or hallucinated outright (∞) counted over all seeds."
        + (
            ""
            if config.evaluate_rounds
            else " Only the final models are scored (`evaluate_rounds = false`)."
        ),
        "",
        "## Sites",
        "",
        "| site | training cases | held-out cases | protocol |",
        "|---|---|---|---|",
    ]
    for s in config.sites:
        lines.append(f"| {s.preset} | {s.train} | {s.held_out} | {_site_description(s.preset)} |")
    for task, data in tasks.items():
        methods = data["methods"]
        if not methods:
            continue
        setup = config.task_setup[task]
        sites = sorted(next(iter(methods.values()))["sites"])
        labels = sorted(next(iter(methods.values()))["mean"]["dice"])
        lines += [
            "",
            f"## {task}",
            "",
            f"Patch {list(setup.patch_size)} at {list(setup.target_spacing_mm)} mm; "
            f"{_network(config, task)}.",
            "",
            "| method | Dice (mean of sites) | "
            + " | ".join(sites)
            + " | "
            + " | ".join(f"recall {b.description}" for b in bins)
            + " | FP/case | "
            + " | ".join(f"HD95 {lab} (mm; ∞)" for lab in labels)
            + " | MB sent per site | wall time (s) |",
            "|---" * (5 + len(sites) + len(bins) + len(labels)) + "|",
        ]
        for method, m in methods.items():
            sent = np.mean([m["sites"][s]["bytes_sent"] for s in sites])
            mean = m["mean"]
            lines.append(
                f"| {method} | **{_fmt(mean['dice_mean'])}** | "
                + " | ".join(_fmt(m["sites"][s]["dice_mean"]) for s in sites)
                + " | "
                + " | ".join(_fmt(mean.get("recall", {}).get(b.value)) for b in bins)
                + f" | {_fmt(mean.get('false_positives_per_case'), 2)} | "
                + " | ".join(
                    f"{_fmt(mean['hd95_mm'][lab], 1)}; {mean.get('hd95_missed', {}).get(lab, 0)}"
                    for lab in labels
                )
                + f" | {_mb(float(sent))} | {_fmt(m['wall_s'], 0)} |"
            )
        lesion_counts = {
            b.value: sum(
                m["lesions"][b.value]
                for m in next(iter(methods.values()))["sites"].values()
                if "lesions" in m
            )
            for b in bins
        }
        lines += [
            "",
            "MB sent per site: the model weights (or updates) a site uploads over the run; "
            "for centralised, the images and labels it would have to hand over. Held-out "
            "lesions over all seeds: "
            + ", ".join(f"{lesion_counts[b.value]} {b.description}" for b in bins)
            + ".",
            "",
            "### Dice per label and site",
            "",
            "| method | " + " | ".join(f"{s} {lab}" for s in sites for lab in labels) + " |",
            "|---" * (1 + len(sites) * len(labels)) + "|",
        ]
        for method, m in methods.items():
            lines.append(
                f"| {method} | "
                + " | ".join(_fmt(m["sites"][s]["dice"][lab]) for s in sites for lab in labels)
                + " |"
            )
        lines += [
            "",
            "### Targets",
            "",
            "Decided on paired differences (A - B) with their 95 % t-interval "
            "(appliance/federation/simulation/decisions.py): *within 1 point* is met when "
            "the whole interval lies above -0.01 and missed when it lies wholly below; "
            "*A > B* is met when it lies above 0 and missed when it lies at or below 0; "
            "anything else is undecided.",
            "",
            "| target | verdict | A - B | 95 % interval | n | units | note |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in data["targets"]:
            lines += _decision_rows(t)
    lines += ["", "## Plots", ""]
    for title, name in plots.items():
        lines.append(f"![{title}]({name})")
        lines.append("")
    discussion = config_dir() / f"{config.name}.discussion.md"
    if discussion.is_file():
        lines += [discussion.read_text(encoding="utf-8").strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def _grouped_bars(
    ax: Any, methods: Mapping[str, Any], groups: Sequence[str], stats_of: Any
) -> None:
    width = 0.8 / len(methods)
    for i, (method, m) in enumerate(methods.items()):
        stats = stats_of(m)
        means = [s[0] if s else 0.0 for s in stats]
        stds = [s[1] if s else 0.0 for s in stats]
        xs = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(xs, means, width, yerr=stds, label=method, capsize=2)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylim(0, 1)
    ax.legend(ncol=5, fontsize=8, loc="upper left")


def write_plots(config: SimConfig, tasks: Mapping[str, Any], out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t, d in tasks.items() if d["methods"]]
    if not shown:
        return {}
    names = {
        "Dice per method and site": f"federation_{config.name}_dice.png",
        "Lesion recall by size per method": f"federation_{config.name}_recall.png",
    }
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 4.2 * len(shown)), squeeze=False)
    for ax, task in zip(axes[:, 0], shown, strict=True):
        methods = tasks[task]["methods"]
        sites = sorted(next(iter(methods.values()))["sites"])
        _grouped_bars(
            ax,
            methods,
            [*sites, "mean"],
            lambda m, sites=sites: (
                [m["sites"][s]["dice_mean"] for s in sites] + [m["mean"]["dice_mean"]]
            ),
        )
        ax.set_ylabel("Dice")
        ax.set_title(f"{task}: held-out Dice per site (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out_dir / names["Dice per method and site"], dpi=110)
    plt.close(fig)

    bins = list(LesionSizeBin)
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 4.2 * len(shown)), squeeze=False)
    for ax, task in zip(axes[:, 0], shown, strict=True):
        methods = tasks[task]["methods"]
        _grouped_bars(
            ax,
            methods,
            [b.description for b in bins],
            lambda m: [m["mean"].get("recall", {}).get(b.value) for b in bins],
        )
        ax.set_ylabel("lesion recall (all sites)")
        ax.set_title(f"{task}: lesion recall by equivalent diameter (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(out_dir / names["Lesion recall by size per method"], dpi=110)
    plt.close(fig)

    curves = [t for t in shown if any(m["curve"] for m in tasks[t]["methods"].values())]
    if curves:
        name = f"federation_{config.name}_rounds.png"
        names["Dice against local steps per site"] = name
        fig, axes = plt.subplots(1, len(curves), figsize=(6.5 * len(curves), 4.2), squeeze=False)
        for ax, task in zip(axes[0, :], curves, strict=True):
            for method, m in tasks[task]["methods"].items():
                curve = np.array(m["curve"])
                if curve.size:
                    ax.errorbar(curve[:, 0], curve[:, 1], yerr=curve[:, 2], label=method, capsize=2)
            ax.set_xlabel("local optimiser steps per site")
            ax.set_ylabel("Dice (mean of sites)")
            ax.set_ylim(0, 1)
            ax.set_title(f"{task}: Dice against training budget")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=110)
        plt.close(fig)
    return names


def write_report(
    config: SimConfig,
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    command: str,
    wall_s: float | None = None,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = summarise(config, records)
    plots = write_plots(config, tasks, out_dir)
    precisions = sorted({str(r["precision"]) for r in records if r.get("precision")})
    precision = "; ".join(precisions)
    json_path = out_dir / f"federation_{config.name}.json"
    json_path.write_text(
        json.dumps(
            {
                "config": config.to_dict(),
                "command": command,
                "wall_s": None if wall_s is None else round(wall_s, 1),
                "precision": precision,
                "generated": datetime.now(UTC).isoformat(timespec="seconds"),
                "small_lesion_mm": SMALL_LESION_DIAMETER_MM,
                "tasks": tasks,
                "records": [{k: v for k, v in r.items() if k != "fingerprint"} for r in records],
            },
            indent=1,
            sort_keys=True,
        ),
        encoding="utf-8",
    )
    md_path = out_dir / f"federation_{config.name}.md"
    md_path.write_text(
        render_markdown(config, tasks, command, plots, wall_s=wall_s, precision=precision),
        encoding="utf-8",
    )
    return {"json": json_path, "markdown": md_path, **{k: out_dir / v for k, v in plots.items()}}
