"""A site joins the federation: this appliance's SuperNode connects to the coordinator,
serves runs, and every run that ends here is handed off (:mod:`appliance.federation.handoff`).

One code path for ``appliance federate join`` and for ``appliance serve``'s scheduled
joins (:mod:`appliance.federation.schedule`). The SuperNode is a real
``flower-supernode`` process (:func:`appliance.federation.runner.start_supernode`),
stopped by PID when the join ends, fails or is stopped (``stop`` event: SIGTERM), and
started again when it exits (:mod:`appliance.federation.node_keeper`: after a crash the
coordinator refuses the site until it has missed its heartbeats).
No Flower import.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import AppConfig
from appliance.errors import FederationError
from appliance.federation.node_keeper import KeptNode
from appliance.federation.outputs import RESULT_FILE
from appliance.federation.runner import Process, Tls, free_port, start_supernode
from appliance.federation.site_settings import RunLimits

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JoinOutcome:
    """What one join saw: the runs that ended here, and what became of their weights."""

    runs: tuple[str, ...]
    #: one line (or a gate report) per run: the candidate and the gate's decision
    handed_off: tuple[str, ...]
    #: runs whose hand-off failed, with the reason
    errors: tuple[str, ...]
    stopped: bool


def site_tls(config: AppConfig) -> Tls | None:
    """The TLS files a site needs (the CA that signed the SuperLink's certificate)."""
    fed = config.federation
    if fed.insecure:
        return None
    if fed.tls_ca_file is None:
        raise FederationError("federation.tls_ca_file is required unless federation.insecure")
    return Tls(ca=fed.tls_ca_file)


def site_name(config: AppConfig) -> str:
    """``federation.site_name``, else the DICOM AE title made a valid site name."""
    fed = config.federation
    return fed.site_name or re.sub(r"[^A-Za-z0-9_-]", "_", config.dicom.ae_title.strip())


def site_dir(config: AppConfig) -> Path:
    return config.federation.state_root(config.storage) / "site"


def node_config(config: AppConfig) -> dict[str, Any]:
    """The SuperNode's ``node_config``: the appliance's own cases from its store, and
    the run settings it accepts (``federation.max_local_steps``, ...)."""
    fed = config.federation
    limits = RunLimits(
        max_local_steps=fed.max_local_steps,
        max_batch_size=fed.max_batch_size,
        max_patch_voxels=fed.max_patch_voxels,
        min_lr=fed.min_lr,
        max_lr=fed.max_lr,
        max_rounds=fed.max_rounds,
    )
    return {
        "site-name": site_name(config),
        "state-dir": str(site_dir(config)),
        "case-source": "store",
        "database": str(config.storage.database),
        **limits.to_config(),
    }


def _ended_runs(directory: Path) -> set[str]:
    return {p.parent.name for p in directory.glob(f"runs/*/{RESULT_FILE}")}


def join(
    config: AppConfig,
    *,
    stop: threading.Event,
    timeout: float,
    stay: bool = False,
    hand_off: bool = True,
    say: Callable[[str], None] = LOG.info,
    poll: float = 1.0,
) -> JoinOutcome:
    """Run the SuperNode until a run has ended here (``stay``: until ``stop`` or
    ``timeout``), ``stop`` is set, or ``timeout`` seconds pass without a run ending
    (:class:`FederationError`, as when the SuperNode keeps exiting). Each ended run is handed
    off (candidate + gate) when ``hand_off``; a failed hand-off is reported and does not
    end the join."""
    fed = config.federation
    directory = site_dir(config)
    name = site_name(config)
    before = _ended_runs(directory)

    def start() -> Process:
        return start_supernode(
            directory,
            superlink=fed.coordinator,
            runtime_port=free_port(),
            node_config=node_config(config),
            tls=site_tls(config),
            auth_private_key=fed.auth_private_key,
        )

    node = KeptNode(start, say=say)
    say(f"site {name}: SuperNode (pid {node.pid}) connecting to {fed.coordinator}")
    runs: list[str] = []
    handed: list[str] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while not stop.is_set():
            node.check()  # started again after an exit (the coordinator may refuse it a while)
            for run_id in sorted(_ended_runs(directory) - before - set(runs)):
                runs.append(run_id)
                say(f"run {run_id} ended; site record in {directory / 'runs' / run_id}")
                _audit_run(config, directory, run_id)
                if hand_off:
                    _hand_off(config, directory, run_id, handed, errors, say)
            if runs and not stay:
                break
            if time.monotonic() > deadline:
                if runs:  # --stay: served runs until its time was up
                    break
                raise FederationError(f"no run ended within {timeout:g} s")
            stop.wait(poll)
    finally:
        node.stop()
    return JoinOutcome(tuple(runs), tuple(handed), tuple(errors), stop.is_set())


def _audit_run(config: AppConfig, directory: Path, run_id: str) -> None:
    """The audit trail's record of a federated run this site took part in."""
    from appliance.errors import ApplianceError
    from appliance.federation.outputs import site_result
    from appliance.store import Store
    from appliance.store.audit import AuditEvent

    details: dict[str, Any] = {}
    try:
        result = site_result(directory, run_id)
        details = {
            "strategy": result.strategy,
            "rounds": result.rounds,
            "task": result.task,
            "sites": len(result.sites),
            "weights_sha256": result.weights_sha256,
        }
    except (ApplianceError, FederationError, OSError) as exc:
        details = {"record": f"unreadable: {exc}"[:200]}
    store = Store(config.storage.database)
    try:
        strategy = str(details.get("strategy", "unknown"))
        store.bump("federation_runs", strategy)
        store.bump("federation_rounds", strategy, int(details.get("rounds", 0)))
        store.audit.record(
            AuditEvent.FEDERATION_JOINED,
            run=run_id,
            site=site_name(config),
            coordinator=config.federation.coordinator,
            **details,
        )
    finally:
        store.close()


def _hand_off(
    config: AppConfig,
    directory: Path,
    run_id: str,
    handed: list[str],
    errors: list[str],
    say: Callable[[str], None],
) -> None:
    from appliance.errors import ApplianceError
    from appliance.federation.handoff import hand_off
    from appliance.store import Store

    store = Store(config.storage.database)
    try:
        outcome = hand_off(store, config, directory, run_id)
    except (ApplianceError, FederationError) as exc:
        message = f"run {run_id}: no candidate: {exc}"
        errors.append(message)
        LOG.error("%s", message)
        say(message)
        return
    finally:
        store.close()
    text = outcome.summary()
    handed.append(text)
    say(text)
