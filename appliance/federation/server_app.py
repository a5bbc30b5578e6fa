"""The ServerApp the coordinator's SuperLink runs for ``appliance federate start``.

1. reads the run settings (Flower ``run_config``), builds the initial network (seeded, or
   ``initial-weights``): the task's model, or for a refiner run (``refiner-margin``) a
   two-stage model's refiner on its own grid;
2. waits for ``min-sites`` SuperNodes and asks each for its site name and case count
   (``query.info``);
3. runs the named strategy (:func:`appliance.federation.strategies.build_strategy`),
   recording progress to ``<output-dir>/progress-<run id>.json``;
4. hands the final weights to every site (``query.final``; each writes its own record)
   and writes ``<output-dir>/runs/<run id>/`` (:mod:`appliance.federation.outputs`).
"""

from __future__ import annotations

# first: imports the model stack under one module lock (see its docstring)
import appliance.federation.model_stack  # noqa: F401

# isort: split

import tempfile
import time
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid, ServerApp

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.outputs import write_result
from appliance.federation.params import from_record, model_state, to_record
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.site_state import load_state
from appliance.federation.strategies import SiteBook, build_strategy, train_mode
from appliance.federation.strategies.common import attribute

app = ServerApp()


def _case_count(value: Any, most: int) -> tuple[int, str | None]:
    """A site's reported training-case count, and why it is refused (``None``: it is
    not): a whole number from 0 to ``most`` (the run's ``max-site-cases``)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0, f"cases={value!r} is not a number"
    if not (float(value).is_integer() and 0 <= value <= most):
        return 0, f"cases={value!r} is outside 0..{most} (max-site-cases)"
    return int(value), None


#: the least a tolerant run's discovery waits for the sites to describe themselves: longer
#: than Flower's heartbeat patience (60 s), by which a node that died is reported gone, so
#: sites whose ClientApps all start at once on a busy machine are not mistaken for dead
DISCOVERY_MIN_WAIT_S = 90.0


def discovery_wait(run: RunSettings) -> float:
    """How long a tolerant run's discovery waits: the round deadline, at least
    :data:`DISCOVERY_MIN_WAIT_S`, at most ``timeout-s``. It ends as soon as every
    connected node answered (or Flower reported it gone)."""
    return min(max(run.round_timeout, DISCOVERY_MIN_WAIT_S), run.timeout_s)


def discover_sites(
    grid: Grid,
    min_sites: int,
    timeout: float,
    max_site_cases: int = 1_000_000,
    *,
    reply_deadline: float | None = None,
) -> tuple[SiteBook, dict[str, str]]:
    """Wait for ``min_sites`` nodes, then ask every connected node who it is. A site
    whose case count is not a whole number from 0 to ``max_site_cases`` is kept in the
    book as refused (logged): the strategies refuse every reply of it.

    ``reply_deadline`` (a run that tolerates dropouts): a connected node that fails, or
    does not describe itself within that many seconds (a SuperNode that died moments
    ago is still listed as connected until its heartbeats are missed), is left out of
    the run, which goes on when at least ``min_sites`` described themselves. Returns
    the book and the nodes left out (``"node <id>"`` -> why)."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < min_sites:
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of the {min_sites} sites needed joined within {timeout:g} s"
            )
        time.sleep(1.0)
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), node, f"{MessageType.QUERY}.info")
        for node in nodes
    ]
    book = SiteBook()
    left_out: dict[str, str] = {}
    wait = timeout if reply_deadline is None else reply_deadline
    replies = attribute(grid.send_and_receive(messages, timeout=wait), messages)
    for reply in replies:
        node = reply.metadata.src_node_id
        if reply.has_error():
            if reply_deadline is None:
                raise FederationError(f"node {node} did not describe itself: {reply.error.reason}")
            left_out[f"node {node}"] = f"failed: {reply.error.reason}"
            continue
        book.names[node] = str(reply.content.config_records["site"]["site"])
        cases, refused = _case_count(
            reply.content.metric_records["metrics"].get("cases"), max_site_cases
        )
        book.cases[node] = cases
        if refused is not None:
            book.refused[node] = refused
            log(WARNING, "site %s is refused: %s", book.names[node], refused)
    answered = {r.metadata.src_node_id for r in replies}
    left_out |= {f"node {n}": f"no reply within {wait:g} s" for n in nodes if n not in answered}
    for who, why in left_out.items():
        log(WARNING, "discovery: %s left out of the run: %s", who, why)
    names = list(book.names.values())
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise FederationError(f"two SuperNodes call themselves {', '.join(duplicates)}")
    if reply_deadline is not None and len(book.names) < min_sites:
        raise FederationError(
            f"only {len(book.names)} of the {min_sites} sites needed described themselves: "
            + "; ".join(f"{n}: {why}" for n, why in left_out.items())
        )
    return book, left_out


def _initial_state(run: RunSettings) -> tuple[dict[str, Any], frozenset[str], dict[str, Any]]:
    from models.networks import build_network, norm_parameter_names

    spec, network = run.task_spec(), run.network_config()
    torch.manual_seed(run.seed)
    model = build_network(spec, network)
    norm_keys = frozenset(norm_parameter_names(model))
    state = model_state(model)
    if run.initial_weights:
        loaded = load_state(Path(run.initial_weights))
        if set(loaded) != set(state) or any(
            np.shape(loaded[k]) != np.shape(v) for k, v in state.items()
        ):
            raise FederationError("initial-weights: the weights do not fit the network")
        # in the network's own dtypes: the sites' replies are checked against them
        state = {k: np.asarray(loaded[k]).astype(v.dtype) for k, v in state.items()}
    return state, norm_keys, network.to_dict()


def _hand_out(
    grid: Grid,
    book: SiteBook,
    arrays: ArrayRecord,
    config: ConfigRecord,
    timeout: float,
    *,
    tolerant: bool = False,
) -> dict[str, str]:
    """Send the final model to every site of the run. Returns the sites that did not get
    it, with why (a site that is down or fails); that fails the run unless it tolerates
    dropouts and at least one site got the model."""
    messages = [
        Message(
            RecordDict({"arrays": arrays, "config": config}), node, f"{MessageType.QUERY}.final"
        )
        for node in book.names
    ]
    replies = attribute(grid.send_and_receive(messages, timeout=timeout), messages)
    failed = {
        book.name(r.metadata.src_node_id): f"failed: {r.error.reason}"
        for r in replies
        if r.has_error()
    }
    answered = {r.metadata.src_node_id for r in replies}
    failed |= {
        book.name(node): f"no reply within {timeout:g} s"
        for node in book.names
        if node not in answered
    }
    if failed and (not tolerant or len(failed) == len(book.names)):
        raise FederationError(
            "handing out the final model failed at "
            + "; ".join(f"{site}: {why}" for site, why in sorted(failed.items()))
        )
    for site, why in sorted(failed.items()):
        log(WARNING, "site %s did not get the final model: %s", site, why)
    return failed


def run_federation(grid: Grid, context: Context) -> None:
    run = RunSettings.from_config(dict(context.run_config))
    out = Path(run.output_dir) if run.output_dir else Path(tempfile.gettempdir()) / "appliance-fl"
    run_id = str(context.run_id)
    rounds = run.rounds
    progress = ProgressLog(out, run_id, run.strategy.value, rounds)
    try:
        state, norm_keys, network = _initial_state(run)
        book, left_out = discover_sites(
            grid,
            run.min_sites,
            run.timeout_s,
            run.max_site_cases,
            reply_deadline=discovery_wait(run) if run.tolerates_dropouts else None,
        )
        progress.set_sites(
            [
                {"node_id": node, "site": book.names[node], "cases": book.cases[node]}
                | ({"refused": book.refused[node]} if node in book.refused else {})
                for node in sorted(book.names, key=book.name)
            ]
        )
        if left_out:  # round 0: discovery
            progress.add(0, "dropped", {n: {"dropped": why} for n, why in left_out.items()}, None)
        strategy = build_strategy(run, book, progress, norm_keys)
        mode = train_mode(run.strategy)
        train_config = ConfigRecord({"mode": mode, "strategy": run.strategy.value})
        evaluate_config = ConfigRecord({"mode": mode})
        result = strategy.start(
            grid=grid,
            initial_arrays=to_record(state),
            num_rounds=rounds,
            timeout=run.round_timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
        )
        is_gossip = run.strategy == StrategyName.GOSSIP
        final = None if is_gossip else from_record(result.arrays)
        sites = [book.names[n] for n in sorted(book.names, key=book.name)]
        contributors = list(getattr(strategy, "contributors", ()))
        final_config = ConfigRecord(
            {
                "mode": mode,
                "strategy": run.strategy.value,
                "rounds": rounds,
                "sites": sites,
                "contributors": contributors,
            }
        )
        missed = _hand_out(
            grid,
            book,
            result.arrays if not is_gossip else ArrayRecord(),
            final_config,
            run.round_timeout if run.tolerates_dropouts else run.timeout_s,
            tolerant=run.tolerates_dropouts,
        )
        extra: dict[str, Any] = {}
        if not is_gossip:
            extra["contributors"] = contributors
        if missed:
            extra["not_handed_out"] = missed
        visits = getattr(strategy, "visits", None)
        if visits:
            extra["visits"] = list(visits)
        if getattr(strategy, "skipped", None):
            extra["skipped"] = list(strategy.skipped)  # type: ignore[attr-defined]
        if is_gossip:
            extra["consensus_distance"] = getattr(strategy, "consensus", None)
            extra["pairings"] = getattr(strategy, "pairings", [])
        written = write_result(
            out,
            run_id=run_id,
            strategy=run.strategy.value,
            rounds=rounds,
            task=run.task,
            network=network,
            task_overrides=run.task_overrides(),
            sites=sites,
            state=final,
            global_model=not is_gossip,
            norm_local=run.strategy == StrategyName.FEDBN,
            extra=extra,
            stage=run.stage,
        )
        progress.finish(
            {
                "directory": str(written.directory),
                "global_model": written.global_model,
                "weights_sha256": written.weights_sha256,
                **extra,
            }
        )
    except Exception as exc:
        progress.fail(f"{type(exc).__name__}: {exc}")
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(grid, context)
