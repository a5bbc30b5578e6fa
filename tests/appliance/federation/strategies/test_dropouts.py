"""Sites that fail or miss a round's deadline: left out and recorded; a round that
tolerates dropouts (``round-min-sites`` / ``round-min-fraction``) goes on while enough
of the sites asked replied, and fails naming who dropped out and why when too few did;
cwt/swt skip such a site and take the model on to the next."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.params import from_record, to_record
from appliance.federation.progress import ProgressLog, read_progress
from appliance.federation.settings import RunSettings, run_config_map
from appliance.federation.strategies import WeightTransfer, build_strategy
from appliance.federation.strategies.screening import Screen
from tests.appliance.federation.strategies.replies import FakeGrid, book, failure, reply

W = {"w": np.zeros(2, np.float32)}


@pytest.mark.parametrize(
    ("sites", "fraction", "asked", "expected"),
    [(3, 1.0, 4, 3), (9, 1.0, 4, 4), (0, 0.75, 4, 3), (0, 0.5, 3, 2), (0, 0.01, 5, 1)],
)
def test_round_minimum(sites: int, fraction: float, asked: int, expected: int) -> None:
    run = RunSettings(round_min_sites=sites, round_min_fraction=fraction, round_deadline_s=30)
    assert run.tolerates_dropouts and run.round_minimum(asked) == expected
    assert run.round_timeout == 30 and RunSettings(timeout_s=99).round_timeout == 99
    assert RunSettings.from_config(run_config_map(run)) == run
    assert not RunSettings().tolerates_dropouts


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"round-deadline-s": -1}, "round-deadline-s: must be >= 0"),
        ({"round-min-sites": -1}, "round-min-sites: must be >= 0"),
        ({"round-min-fraction": 0}, r"round-min-fraction: must be in \(0, 1\]"),
    ],
)
def test_bad_fault_settings_name_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(FederationError, match=message):
        RunSettings.from_config(config)


def _round(
    run: RunSettings,
    progress: ProgressLog,
    replies: list[Message],
    contributors: list[str] | None = None,
) -> ArrayRecord | None:
    """One training round of fedavg over four sites; ``contributors`` receives the sites
    the strategy says went into the aggregate."""
    strategy = build_strategy(run, book(4, [2, 2, 2, 2]), progress, frozenset())
    grid = cast(Grid, FakeGrid([1, 2, 3, 4]))
    asked = list(strategy.configure_train(1, to_record(W), ConfigRecord(), grid))
    assert len(asked) == 4
    arrays, _ = strategy.aggregate_train(1, replies)
    if contributors is not None:
        contributors.extend(strategy.contributors)  # type: ignore[attr-defined]
    return arrays


def _trained(value: float, node: int) -> Message:
    return reply(node, {"w": np.full(2, value, np.float32)}, {"num-examples": 2})


@pytest.mark.usefixtures("flower_task")
def test_a_tolerant_round_goes_on_without_failed_and_late_sites(tmp_path: Path) -> None:
    progress = ProgressLog(tmp_path, "1", "fedavg", 1)
    run = RunSettings(min_sites=4, round_min_sites=2, round_deadline_s=45)
    # site_3's SuperNode went away (Flower's error reply); site_4 never answered
    replies = [_trained(1.0, 1), _trained(3.0, 2), failure(3, "node unavailable")]
    contributors: list[str] = []
    arrays = _round(run, progress, replies, contributors)
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 2.0)
    assert contributors == ["site_1", "site_2"]
    saved = read_progress(tmp_path)
    assert saved is not None
    dropped = next(e for e in saved["history"] if e["phase"] == "dropped")["sites"]
    assert dropped == {
        "site_3": {"dropped": "failed: node unavailable"},
        "site_4": {"dropped": "no reply within the round's deadline (45 s)"},
    }
    trained = next(e for e in saved["history"] if e["phase"] == "train")["sites"]
    assert set(trained) == {"site_1", "site_2"}


@pytest.mark.usefixtures("flower_task")
def test_too_few_replies_fail_the_round_naming_each_dropout(tmp_path: Path) -> None:
    progress = ProgressLog(tmp_path, "1", "fedavg", 1)
    run = RunSettings(min_sites=4, round_min_fraction=0.75)
    with pytest.raises(FederationError) as info:
        _round(run, progress, [_trained(1.0, 1), _trained(1.0, 2), failure(3, "boom")])
    text = str(info.value)
    assert "2 of the 4 sites asked replied, the round needs 3" in text
    assert "site_3: failed: boom" in text and "site_4: no reply" in text


@pytest.mark.usefixtures("flower_task")
def test_by_default_an_error_fails_the_round_and_a_late_site_is_left_out(
    tmp_path: Path,
) -> None:
    progress = ProgressLog(tmp_path, "1", "fedavg", 1)
    with pytest.raises(FederationError, match="site_3: boom"):
        _round(RunSettings(min_sites=4), progress, [_trained(1.0, 1), failure(3, "boom")])
    arrays = _round(RunSettings(min_sites=4), progress, [_trained(1.0, 1), _trained(3.0, 2)])
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 2.0)
    saved = read_progress(tmp_path)
    assert saved is not None
    dropped = [e for e in saved["history"] if e["phase"] == "dropped"][-1]["sites"]
    assert set(dropped) == {"site_3", "site_4"}


class _Sites:
    """Answers each training visit: +1 to the weights, except the sites that are down."""

    def __init__(self, down: set[int], late: set[int]) -> None:
        self.down, self.late = down, late
        self.asked: list[int] = []

    def send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        out = []
        for m in messages:
            node = m.metadata.dst_node_id
            self.asked.append(node)
            if node in self.late:
                continue
            if node in self.down:
                out.append(failure(node, "node unavailable"))
                continue
            w = from_record(m.content.array_records["arrays"])["w"] + 1
            content = RecordDict(
                {
                    "arrays": to_record({"w": w}),
                    "metrics": MetricRecord({"num-examples": 1}),
                }
            )
            out.append(Message(content, reply_to=m))
        return out

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("single", [False, True])
def test_weight_transfer_skips_a_site_that_is_down(tmp_path: Path, single: bool) -> None:
    run = RunSettings(
        strategy=StrategyName.SWT if single else StrategyName.CWT,
        min_sites=3,
        round_min_sites=1,
        evaluate=False,
    )
    strategy = WeightTransfer(
        run, book(3, [1, 1, 1]), ProgressLog(tmp_path, "1", "cwt", 2), single=single
    )
    grid = cast(Grid, _Sites(down={2}, late={3} if single else set()))
    result = strategy.start(grid, to_record(W), num_rounds=2, timeout=5)
    if single:  # site_1 twice; site_2 down and site_3 late: each skipped once and not
        # asked again for the rest of its visit (its second round)
        assert strategy.visits == ["site_1", "site_1"]
        assert strategy.skipped == ["site_2", "site_3"]
        assert strategy.contributors == ("site_1",)  # the last round that trained
        assert cast(_Sites, grid).asked == [1, 1, 2, 3]
    else:  # cwt asks a down site again in every cycle (it may be back)
        assert strategy.visits == ["site_1", "site_3", "site_1", "site_3"]
        assert strategy.skipped == ["site_2", "site_2"]
        assert strategy.contributors == ("site_1", "site_3")
    assert np.allclose(from_record(result.arrays)["w"], len(strategy.visits))
    strict = WeightTransfer(RunSettings(min_sites=3, evaluate=False), book(3), None, single=single)
    with pytest.raises(FederationError, match="site_2: node unavailable"):
        strict.start(cast(Grid, _Sites(down={2}, late=set())), to_record(W), num_rounds=1)


class _GossipSites:
    """Each site replies with a model naming its node; ``down[r]`` fail in round r."""

    def __init__(self, down: dict[int, set[int]]) -> None:
        self.down = down
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    def send_and_receive(self, messages: list[Message], *, timeout: float) -> list[Message]:
        out = []
        for m in messages:
            self.sent.append(m)
            node = m.metadata.dst_node_id
            server_round = int(m.content.config_records["config"]["server-round"])
            if node in self.down.get(server_round, set()):
                out.append(failure(node, "node unavailable"))
            else:
                out.append(reply(node, {"w": np.asarray([float(node)])}, {"num-examples": 1}))
        return out


@pytest.mark.usefixtures("flower_task")
def test_gossip_re_pairs_the_sites_that_took_part(tmp_path: Path) -> None:
    from appliance.federation.strategies import Gossip

    run = RunSettings(
        strategy=StrategyName.GOSSIP, min_sites=4, round_min_sites=2, evaluate=False, seed=4
    )
    strategy = Gossip(run, book(4), ProgressLog(tmp_path, "1", "gossip", 3))
    grid = _GossipSites(down={1: {3}, 2: {3}})
    strategy.start(cast(Grid, grid), to_record({"w": np.zeros(1)}), num_rounds=3)
    # site_3 was down in rounds 1 and 2: paired with nobody, nobody paired with it
    for pairing in strategy.pairings[:2]:
        assert set(pairing) == {"site_1", "site_2", "site_4"}
        assert "site_3" not in pairing.values()
    assert set(strategy.pairings[2]) == {"site_1", "site_2", "site_3", "site_4"}
    # back in round 3 it trained on from its own model: no peer's model was relayed to it
    third = [
        m for m in grid.sent if m.metadata.dst_node_id == 3 and m.metadata.message_type == "train"
    ]
    assert [bool(m.content.config_records["config"]["has-peer"]) for m in third] == [False] * 3
    saved = read_progress(tmp_path)
    assert saved is not None
    dropped = [e for e in saved["history"] if e["phase"] == "dropped"]
    assert [e["round"] for e in dropped] == [1, 2]
    assert all(e["sites"] == {"site_3": {"dropped": "failed: node unavailable"}} for e in dropped)
    strict = Gossip(
        RunSettings(strategy=StrategyName.GOSSIP, min_sites=4, evaluate=False), book(4), None
    )
    with pytest.raises(FederationError, match="site_3: node unavailable"):
        strict.start(
            cast(Grid, _GossipSites(down={1: {3}})), to_record({"w": np.zeros(1)}), num_rounds=1
        )


def _described(node: int) -> Message:
    """Node ``node``'s answer to discovery: ``site_<node>`` with 2 cases."""
    return reply(node, {}, {"cases": 2}, "query.info")


class _Discovery(FakeGrid):
    """Nodes 1-4 connected; node 3 fails and node 4 never answers."""

    def __init__(self) -> None:
        super().__init__([1, 2, 3, 4])
        self.waited: list[float] = []

    def send_and_receive(self, messages: object, *, timeout: float) -> list[Message]:
        self.waited.append(timeout)
        nodes = [m.metadata.dst_node_id for m in messages]  # type: ignore[attr-defined]
        return [
            _described(n) if n < 3 else failure(n, "gone", "query.info") for n in nodes if n != 4
        ]


@pytest.mark.usefixtures("flower_task")
def test_discovery_leaves_out_dead_nodes_when_the_run_tolerates_dropouts() -> None:
    from appliance.federation.server_app import discover_sites

    grid = _Discovery()
    found, left_out = discover_sites(cast(Grid, grid), 2, timeout=600, reply_deadline=20)
    assert found.names == {1: "site_1", 2: "site_2"} and grid.waited == [20]
    assert left_out == {"node 3": "failed: gone", "node 4": "no reply within 20 s"}
    with pytest.raises(FederationError) as info:  # too few left to meet min-sites
        discover_sites(cast(Grid, _Discovery()), 3, timeout=600, reply_deadline=20)
    assert "only 2 of the 3 sites needed described themselves" in str(info.value)
    assert "node 4: no reply within 20 s" in str(info.value)
    with pytest.raises(FederationError, match="node 3 did not describe itself: gone"):
        discover_sites(cast(Grid, _Discovery()), 2, timeout=600)  # a strict run


@pytest.mark.usefixtures("flower_task")
def test_the_final_model_goes_to_the_sites_that_are_up_when_the_run_tolerates_dropouts() -> None:
    from appliance.federation.server_app import _hand_out

    def answer(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        return (
            failure(node, "gone", "query.final")
            if node == 2
            else reply(node, {}, {}, "query.final")
        )

    sites = book(3)
    missed = _hand_out(
        cast(Grid, FakeGrid([1, 2, 3], answer)),
        sites,
        to_record(W),
        ConfigRecord(),
        5,
        tolerant=True,
    )
    assert missed == {"site_2": "failed: gone"}
    with pytest.raises(FederationError, match="final model failed at site_2: failed: gone"):
        _hand_out(cast(Grid, FakeGrid([1, 2, 3], answer)), sites, to_record(W), ConfigRecord(), 5)
    nobody = FakeGrid([1, 2, 3], lambda m: failure(m.metadata.dst_node_id, "gone", "query.final"))
    with pytest.raises(FederationError, match="site_1: failed: gone; site_2"):
        _hand_out(cast(Grid, nobody), sites, to_record(W), ConfigRecord(), 5, tolerant=True)


@pytest.mark.usefixtures("flower_task")
def test_errors_the_superlink_makes_for_a_node_are_charged_to_that_node(tmp_path: Path) -> None:
    from flwr.app import MessageType
    from flwr.common.constant import ErrorCode

    from appliance.federation.strategies.common import attribute, message_ttl

    # node 7's SuperNode stopped sending heartbeats; Flower answers the message sent to it
    # with an error from the SuperLink's own node id (1), naming the message it answers
    sent = Message(RecordDict({"config": ConfigRecord({})}), 7, MessageType.TRAIN, ttl=30)
    sent.metadata.__dict__["_message_id"] = "i1"  # as the grid does when it pushes
    from_link = failure(1, "Node Unavailable")
    assert from_link.metadata.reply_to_message_id == "i1"
    fixed = attribute([from_link, _trained(1.0, 2)], [sent])
    assert fixed[0].metadata.src_node_id == 7 and fixed[0].error.reason == "Node Unavailable"
    assert fixed[1].metadata.src_node_id == 2 and not fixed[1].has_error()
    # an expired message is a site that did not answer in time, not a failure
    expired = Message(
        metadata=from_link.metadata, error=Error(code=ErrorCode.MESSAGE_UNAVAILABLE, reason="gone")
    )
    screen = Screen(book(7, [1] * 7), 10**9, asked=(7,), minimum=0, deadline_s=30, tolerant=True)
    progress = ProgressLog(tmp_path, "1", "fedavg", 1)
    assert screen(attribute([expired], [sent]), "round 1", progress=progress, server_round=1) == []
    saved = read_progress(tmp_path)
    assert saved is not None
    assert saved["history"][0]["sites"] == {
        "site_7": {"dropped": "no reply within the round's deadline (30 s)"}
    }
    assert message_ttl(30) == 30 and message_ttl(10**9) == 43200  # Flower's default at most


def test_a_tolerant_discovery_waits_past_flowers_heartbeat_patience() -> None:
    from appliance.federation.server_app import DISCOVERY_MIN_WAIT_S, discovery_wait

    assert DISCOVERY_MIN_WAIT_S > 60  # Flower 1.42 reports a dead node gone within 60 s
    assert discovery_wait(RunSettings(round_deadline_s=20, round_min_sites=3)) == 90
    assert discovery_wait(RunSettings(round_deadline_s=300, round_min_sites=3)) == 300
    assert discovery_wait(RunSettings(timeout_s=45, round_min_sites=3)) == 45
