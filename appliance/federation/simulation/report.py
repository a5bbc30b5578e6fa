"""The federated benchmark's report: seeds aggregated, targets checked, files written.

From the per-(task, seed, method) records of :func:`appliance.federation.simulation.run.
simulate` it writes, under the output directory, for config ``<name>``:

- ``federation_<name>.json``: every figure (mean and std over seeds) and the records;
- ``federation_<name>.md``: the tables, the targets (met or missed, with the numbers)
  and, when ``benchmarks/federation/<name>.discussion.md`` exists, that discussion;
- ``federation_<name>_dice.png``: Dice per method and site; ``federation_<name>_rounds.png``:
  Dice (mean over sites) against the local steps each site has spent.

Dice is the mean over a site's held-out cases of the mean over the task's labels; a
method's overall Dice is the mean over sites (each hospital counts once). Small-lesion
Dice covers lesions below :data:`models.lesion_size.SMALL_LESION_DIAMETER_MM`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from appliance.federation.simulation.config import Method, SimConfig, config_dir
from models.lesion_size import SMALL_LESION_DIAMETER_MM

#: "within 1 Dice point" of the issue and the papers: 0.01 on a 0-1 scale
DICE_POINT = 0.01


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


def summarise_method(records: Sequence[Mapping[str, Any]], steps_per_site: int) -> dict[str, Any]:
    sites = sorted(records[0]["sites"])
    labels = sorted(records[0]["sites"][sites[0]]["dice"])
    out_sites: dict[str, Any] = {}
    for site in sites:
        rows = [r["sites"][site] for r in records]
        out_sites[site] = {
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


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    met: bool | None  # None: could not be decided (method not run, nothing to measure)
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "met": self.met, "detail": self.detail}


def _dice(summary: Mapping[str, Any], method: str, site: str | None = None) -> float | None:
    m = summary.get(method)
    if m is None:
        return None
    stat = m["mean"]["dice_mean"] if site is None else m["sites"][site]["dice_mean"]
    return _mean(stat)


def check_targets(config: SimConfig, task: str, summary: Mapping[str, Any]) -> list[Target]:
    fed = [m.value for m in config.methods if m.federated and m.value in summary]
    targets: list[Target] = []

    name = "best federated strategy within 1 Dice point of centralised"
    central = _dice(summary, Method.CENTRALISED)
    if central is None or not fed:
        targets.append(Target(name, None, "centralised or federated runs missing"))
    else:
        best = max(fed, key=lambda m: _dice(summary, m) or -1.0)
        best_dice = _dice(summary, best) or 0.0
        gap = central - best_dice
        targets.append(
            Target(
                name,
                gap <= DICE_POINT,
                f"best {best} {best_dice:.3f} vs centralised {central:.3f} "
                f"(gap {100 * gap:+.1f} points)",
            )
        )

    shifted = config.task_setup[task].most_shifted_site
    name = f"fedbn >= fedavg on the most shifted site ({shifted})"
    fedbn, fedavg = _dice(summary, Method.FEDBN, shifted), _dice(summary, Method.FEDAVG, shifted)
    if fedbn is None or fedavg is None:
        targets.append(Target(name, None, "fedbn or fedavg not run"))
    else:
        targets.append(Target(name, fedbn >= fedavg, f"fedbn {fedbn:.3f} vs fedavg {fedavg:.3f}"))

    name = f"fedgs > fedavg on small-lesion Dice (< {SMALL_LESION_DIAMETER_MM:g} mm)"
    gs = summary.get(Method.FEDGS)
    avg = summary.get(Method.FEDAVG)
    if gs is None or avg is None:
        targets.append(Target(name, None, "fedgs or fedavg not run"))
    else:
        a = _mean(gs["mean"]["small_lesion_dice"])
        b = _mean(avg["mean"]["small_lesion_dice"])
        if a is None or b is None:
            targets.append(
                Target(
                    name,
                    None,
                    f"no lesion below {SMALL_LESION_DIAMETER_MM:g} mm in the held-out cases",
                )
            )
        else:
            targets.append(Target(name, a > b, f"fedgs {a:.3f} vs fedavg {b:.3f}"))

    small = config.smallest_site
    name = f"every federated strategy > local-only on the smallest site ({small})"
    local = _dice(summary, Method.LOCAL, small)
    if local is None or not fed:
        targets.append(Target(name, None, "local or federated runs missing"))
    else:
        scores = {m: _dice(summary, m, small) or 0.0 for m in fed}
        losers = [m for m, v in scores.items() if v <= local]
        detail = f"local {local:.3f}; " + ", ".join(f"{m} {v:.3f}" for m, v in scores.items())
        if losers:
            detail += f" (not above local: {', '.join(losers)})"
        targets.append(Target(name, not losers, detail))
    return targets


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
            "targets": [t.to_dict() for t in check_targets(config, task, methods)],
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
    from models.phantoms import SITE_PRESETS

    return SITE_PRESETS[preset].description


def render_markdown(
    config: SimConfig, tasks: Mapping[str, Any], command: str, plots: Mapping[str, str]
) -> str:
    lines = [
        f"# Federated benchmark: `{config.name}`",
        "",
        f"Made with `{command}` on {datetime.now(UTC).strftime('%Y-%m-%d')}"
        f" ({config.device.upper()}). {config.description}".rstrip(),
        "",
        f"Seeds {', '.join(str(s) for s in config.seeds)}: each figure is the mean ± std over "
        f"the seeds (a seed changes the phantom patients, the initial weights and the "
        f"sampling). Every site spends the same budget under every method: "
        f"{config.rounds} rounds × {config.local_steps} local optimiser steps "
        f"(batch {config.batch_size}, lr {config.lr:g}); centralised training spends all "
        f"sites' steps on the pooled data. Network: MONAI UNet {list(config.filters)}, "
        f"{config.norm} norm. Dice: mean over a site's held-out cases of the mean over the "
        f"task's labels, through the clinical inference path; a method's Dice is the mean "
        f"over sites.",
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
            f"Patch {list(setup.patch_size)} at {list(setup.target_spacing_mm)} mm.",
            "",
            "| method | Dice (mean of sites) | "
            + " | ".join(sites)
            + " | "
            + " | ".join(f"Dice {lab}" for lab in labels)
            + f" | small-lesion Dice (< {SMALL_LESION_DIAMETER_MM:g} mm) | "
            + " | ".join(f"HD95 {lab} (mm)" for lab in labels)
            + " | MB sent per site | wall time (s) |",
            "|---" * (5 + len(sites) + 2 * len(labels)) + "|",
        ]
        for method, m in methods.items():
            sent = np.mean([m["sites"][s]["bytes_sent"] for s in sites])
            lines.append(
                f"| {method} | **{_fmt(m['mean']['dice_mean'])}** | "
                + " | ".join(_fmt(m["sites"][s]["dice_mean"]) for s in sites)
                + " | "
                + " | ".join(_fmt(m["mean"]["dice"][lab]) for lab in labels)
                + f" | {_fmt(m['mean']['small_lesion_dice'])} | "
                + " | ".join(_fmt(m["mean"]["hd95_mm"][lab], 1) for lab in labels)
                + f" | {_mb(float(sent))} | {_fmt(m['wall_s'], 0)} |"
            )
        lines += [
            "",
            "MB sent per site: the model weights (or updates) a site uploads over the run; "
            "for centralised, the images and labels it would have to hand over.",
            "",
            "### Targets",
            "",
            "| target | result | figures |",
            "|---|---|---|",
        ]
        for t in data["targets"]:
            verdict = {True: "met", False: "**missed**", None: "not decided"}[t["met"]]
            lines.append(f"| {t['name']} | {verdict} | {t['detail']} |")
    lines += ["", "## Plots", ""]
    for title, name in plots.items():
        lines.append(f"![{title}]({name})")
        lines.append("")
    discussion = config_dir() / f"{config.name}.discussion.md"
    if discussion.is_file():
        lines += [discussion.read_text(encoding="utf-8").strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def write_plots(config: SimConfig, tasks: Mapping[str, Any], out_dir: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {
        "Dice per method and site": f"federation_{config.name}_dice.png",
        "Dice against local steps per site": f"federation_{config.name}_rounds.png",
    }
    shown = [t for t, d in tasks.items() if d["methods"]]
    if not shown:
        return {}
    fig, axes = plt.subplots(len(shown), 1, figsize=(11, 4.2 * len(shown)), squeeze=False)
    for ax, task in zip(axes[:, 0], shown, strict=True):
        methods = tasks[task]["methods"]
        sites = sorted(next(iter(methods.values()))["sites"])
        groups = [*sites, "mean"]
        width = 0.8 / len(methods)
        for i, (method, m) in enumerate(methods.items()):
            stats = [m["sites"][s]["dice_mean"] for s in sites] + [m["mean"]["dice_mean"]]
            means = [s[0] if s else 0.0 for s in stats]
            stds = [s[1] if s else 0.0 for s in stats]
            xs = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
            ax.bar(xs, means, width, yerr=stds, label=method, capsize=2)
        ax.set_xticks(np.arange(len(groups)), groups)
        ax.set_ylabel("Dice")
        ax.set_ylim(0, 1)
        ax.set_title(f"{task}: held-out Dice per site (mean ± std over seeds)")
        ax.legend(ncol=5, fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / names["Dice per method and site"], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 4.2), squeeze=False)
    for ax, task in zip(axes[0, :], shown, strict=True):
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
    fig.savefig(out_dir / names["Dice against local steps per site"], dpi=110)
    plt.close(fig)
    return names


def write_report(
    config: SimConfig,
    records: Sequence[Mapping[str, Any]],
    out_dir: Path,
    *,
    command: str,
) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = summarise(config, records)
    plots = write_plots(config, tasks, out_dir)
    json_path = out_dir / f"federation_{config.name}.json"
    json_path.write_text(
        json.dumps(
            {
                "config": config.to_dict(),
                "command": command,
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
    md_path.write_text(render_markdown(config, tasks, command, plots), encoding="utf-8")
    return {"json": json_path, "markdown": md_path, **{k: out_dir / v for k, v in plots.items()}}
