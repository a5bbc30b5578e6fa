"""A whole federated run in one process: the real ServerApp
(:func:`appliance.federation.server_app.run_federation`) talking to the real ClientApp
handlers of each site through a ``Grid`` that calls them directly (no SuperLink, no
SuperNode, no subprocesses). Cheap enough for unit tests; the interop tests cover
Flower's processes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from flwr.app import Context, Message, RecordDict
from flwr.serverapp import Grid

from appliance.federation import client_app, server_app
from appliance.federation.settings import RunSettings, run_config_map

RUN_ID = 11

_HANDLERS: dict[str, Callable[[Message, Context], Message]] = {
    "query.info": client_app.info,
    "query.final": client_app.final,
    "train": client_app.train,
    "train.average": client_app.average,
    "evaluate": client_app.evaluate,
}


class SiteGrid:
    """The ``Grid`` a ServerApp sees: node ``i`` is the site of ``contexts[i]``; every
    message is answered by the ClientApp handler of its type (replies kept in
    ``replies``, in order)."""

    def __init__(self, contexts: Mapping[int, Context]) -> None:
        self.contexts = dict(contexts)
        self.replies: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        out = []
        for message in messages:
            handler = _HANDLERS[message.metadata.message_type]
            reply = handler(message, self.contexts[message.metadata.dst_node_id])
            self.replies.append(reply)
            out.append(reply)
        return out


def site_context(run: RunSettings, node_id: int, node_config: Mapping[str, Any]) -> Context:
    return Context(
        run_id=RUN_ID,
        node_id=node_id,
        node_config=dict(node_config),
        state=RecordDict(),
        run_config=run_config_map(run),
    )


def run_in_process(run: RunSettings, sites: Mapping[str, Mapping[str, Any]]) -> SiteGrid:
    """Run ``run`` with the sites ``name -> node_config`` (nodes 1, 2, ...); needs a Flower
    task identity (the ``flower_task`` fixture) to make messages outside a ServerApp."""
    contexts = {
        node: site_context(run, node, {"site-name": name, **config})
        for node, (name, config) in enumerate(sites.items(), start=1)
    }
    grid = SiteGrid(contexts)
    server = Context(
        run_id=RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config=run_config_map(run)
    )
    server_app.run_federation(cast(Grid, grid), server)
    return grid


def phantom_site(state_root: Path, name: str, **extra: Any) -> dict[str, Any]:
    """A small phantom site (two cases: one trains, one is held out)."""
    return {
        "state-dir": str(state_root / name),
        "phantom-preset": name,
        "phantom-cases": 2,
        **extra,
    }
