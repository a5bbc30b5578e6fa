"""``appliance train`` / ``appliance evaluate``: demo weights on synthetic phantoms.

Both forward their options to :func:`models.demo_weights.main` (``--help`` lists them),
so the documented command and ``python -m models.demo_weights`` are one implementation.
"""

from __future__ import annotations

import typer

PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def train(ctx: typer.Context) -> None:
    """Train a task's demo weights on phantoms and register them with their model card.

    e.g. appliance train --task liver_ct --out models/bundles --seed 0 --steps 900 --cases 24
    """
    from models.demo_weights import main

    raise typer.Exit(main(list(ctx.args)))


def evaluate(ctx: typer.Context) -> None:
    """Evaluate a registered bundle on fresh phantoms (Dice, HD95, lesion recall per size).

    e.g. appliance evaluate --task liver_ct --out models/bundles --eval-cases 10 --seeds 0,1
    """
    from models.demo_weights import main

    raise typer.Exit(main(["--evaluate-only", *ctx.args]))
