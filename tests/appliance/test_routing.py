"""Routing rules: defaults cover CT liver and MR glioma (T1 post-contrast or FLAIR)."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.routing import DEFAULT_RULES, RoutingRule, SeriesFacts, route


@pytest.mark.parametrize(
    ("facts", "task", "rule"),
    [
        (
            SeriesFacts(
                "CT", "ABDOMEN", "CT ABDOMEN PORTAL", ("ORIGINAL", "PRIMARY", "AXIAL"), 120
            ),
            "liver_ct",
            "liver-ct",
        ),
        (
            SeriesFacts("MR", "BRAIN", "T1 POST GD", ("ORIGINAL", "PRIMARY"), 60),
            "glioma_mr",
            "glioma-t1c",
        ),
        (SeriesFacts("MR", "HEAD", "Ax T1+C MPRAGE", (), 160), "glioma_mr", "glioma-t1c"),
        (SeriesFacts("MR", "HEAD", "t1c", (), 24), "glioma_mr", "glioma-t1c"),
        (SeriesFacts("MR", "BRAIN", "AX FLAIR", (), 30), "glioma_mr", "glioma-flair"),
    ],
)
def test_default_rules_choose_the_task(facts: SeriesFacts, task: str, rule: str) -> None:
    decision = route(facts)
    assert decision.task == task
    assert decision.rule == rule


@pytest.mark.parametrize(
    ("facts", "why"),
    [
        (SeriesFacts("MR", "BRAIN", "T2 AXIAL", (), 30), "series description"),
        (SeriesFacts("MR", "BRAIN", "T1 PRE", (), 30), "series description"),
        (
            SeriesFacts("CT", "ABDOMEN", "SCOUT", ("ORIGINAL", "PRIMARY", "LOCALIZER"), 40),
            "LOCALIZER",
        ),
        (SeriesFacts("CT", "ABDOMEN", "DOSE REPORT", ("DERIVED", "SECONDARY"), 40), "SECONDARY"),
        (SeriesFacts("CT", "ABDOMEN", "", (), 3), "fewer than 8"),
        (SeriesFacts("US", "ABDOMEN", "", (), 40), "modality US"),
    ],
)
def test_unmatched_series_are_not_processed_with_reason(facts: SeriesFacts, why: str) -> None:
    decision = route(facts)
    assert decision.task is None
    assert decision.reason.startswith("no routing rule matched")
    assert why in decision.reason


def test_rules_come_from_config_in_order() -> None:
    cfg = parse_config(
        {
            "routing": {
                "rules": [
                    {
                        "task": "liver_ct",
                        "modality": "ct",
                        "body_parts": ["LIVER", "ABDOMEN"],
                        "series_description": "portal|venous",
                        "image_type_includes": ["AXIAL"],
                        "min_slices": 20,
                        "name": "portal-only",
                    },
                    {"task": "glioma_mr", "modality": "MR", "image_type_excludes": []},
                ]
            }
        }
    )
    assert [r.label for r in cfg.routing] == ["portal-only", "glioma_mr"]
    assert cfg.routing[0].modality == "CT"
    ok = SeriesFacts("CT", "LIVER", "PORTAL VENOUS", ("ORIGINAL", "AXIAL"), 25)
    assert route(ok, cfg.routing).task == "liver_ct"
    wrong_part = SeriesFacts("CT", "CHEST", "PORTAL VENOUS", ("AXIAL",), 25)
    assert "body part CHEST" in route(wrong_part, cfg.routing).reason
    assert (
        route(SeriesFacts("MR", "", "anything", ("LOCALIZER",), 1), cfg.routing).task == "glioma_mr"
    )  # excludes emptied: localizers allowed by this rule
    assert parse_config({}).routing == DEFAULT_RULES


def test_bad_routing_config_names_each_key() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "routing": {
                    "rules": [
                        {
                            "modality": "PET",
                            "series_description": "(unclosed",
                            "min_slices": 0,
                            "body_parts": "ABDOMEN",
                            "colour": "red",
                        },
                    ]
                }
            }
        )
    keys = {issue.key for issue in info.value.issues}
    assert {
        "routing.rules[0].task",
        "routing.rules[0].modality",
        "routing.rules[0].series_description",
        "routing.rules[0].min_slices",
        "routing.rules[0].body_parts",
        "routing.rules[0].colour",
    } <= keys


def test_empty_rule_list_routes_nothing() -> None:
    decision = route(SeriesFacts("CT", "", "", (), 100), ())
    assert decision.task is None and "no routing rules" in decision.reason
    assert RoutingRule("liver_ct", "CT").mismatch(SeriesFacts("CT", slices=5)) is None


BRATS_RULES = [
    {"task": "glioma_brats", "modality": "MR", "series_description": d, "role": r}
    for d, r in (("t1c", "t1c"), ("^t1$", "t1"), ("t2", "t2"), ("flair", "flair"))
]


def test_rules_of_a_task_of_several_series_carry_their_role() -> None:
    cfg = parse_config({"routing": {"rules": BRATS_RULES, "study_wait_minutes": 0.5}})
    assert [r.role for r in cfg.routing] == ["t1c", "t1", "t2", "flair"]
    assert cfg.study_wait_minutes == 0.5
    decision = route(SeriesFacts("MR", "BRAIN", "AX FLAIR", (), 30), cfg.routing)
    assert (decision.task, decision.role) == ("glioma_brats", "flair")
    assert route(SeriesFacts("CT", "", "", (), 30)).role is None
    assert parse_config({}).study_wait_minutes == 10.0


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"task": "glioma_brats", "modality": "MR"}, "routing.rules[0].role: is required"),
        (
            {"task": "glioma_brats", "modality": "MR", "role": "dwi"},
            "routing.rules[0].role: 'dwi' is not a role of task glioma_brats "
            "(one of: t1c, t1, t2, flair)",
        ),
        (
            {"task": "liver_ct", "modality": "CT", "role": "t1c"},
            "routing.rules[0].role: 't1c' is not a role of task liver_ct",
        ),
    ],
)
def test_a_rule_must_name_one_of_its_tasks_roles(rule: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"routing": {"rules": [rule]}})
    assert message in str(caught.value)


def test_a_single_channel_task_may_name_its_one_role() -> None:
    rule = {"task": "liver_ct", "modality": "CT", "role": "ct"}
    (parsed,) = parse_config({"routing": {"rules": [rule]}}).routing
    assert parsed.role is None


@pytest.mark.parametrize("value", [0, -1, "ten", True])
def test_study_wait_minutes_must_be_positive(value: object) -> None:
    with pytest.raises(ConfigError, match=r"routing\.study_wait_minutes: must be a number"):
        parse_config({"routing": {"study_wait_minutes": value}})


# -- MR sequence attributes -------------------------------------------------------------

MR = SeriesFacts("MR", "BRAIN", "AX 3D", ("ORIGINAL", "PRIMARY"), 40)
POST = dataclasses.replace(
    MR,
    contrast_bolus_agent="GADOTERATE",
    scanning_sequence=("GR", "IR"),
    echo_time_ms=3.0,
    repetition_time_ms=2000.0,
    inversion_time_ms=900.0,
)


@pytest.mark.parametrize(
    ("rule", "facts", "why"),
    [
        (RoutingRule("glioma_brats", "MR", contrast=True), MR, "no contrast agent"),
        (RoutingRule("glioma_brats", "MR", contrast=False), POST, "contrast agent GADOTERATE"),
        (
            RoutingRule("glioma_brats", "MR", scanning_sequence_includes=("IR",)),
            MR,
            "scanning sequence lacks IR",
        ),
        (
            RoutingRule("glioma_brats", "MR", scanning_sequence_includes=("se", "IR")),
            POST,
            "scanning sequence lacks se",
        ),
        (
            RoutingRule("glioma_brats", "MR", echo_time_ms=(0.0, 30.0)),
            dataclasses.replace(MR, echo_time_ms=95.0),
            "echo time 95 ms is outside 0 to 30 ms",
        ),
        (RoutingRule("glioma_brats", "MR", echo_time_ms=(0.0, 30.0)), MR, "no echo time"),
        (
            RoutingRule("glioma_brats", "MR", repetition_time_ms=(2500.0, 15000.0)),
            POST,
            "repetition time 2000 ms is outside 2500 to 15000 ms",
        ),
        (
            RoutingRule("glioma_brats", "MR", repetition_time_ms=(2500.0, 15000.0)),
            MR,
            "no repetition time",
        ),
        (
            RoutingRule("glioma_brats", "MR", inversion_time_ms=(1500.0, 3500.0)),
            POST,
            "inversion time 900 ms is outside 1500 to 3500 ms",
        ),
        (
            RoutingRule("glioma_brats", "MR", inversion_time_ms=(1500.0, 3500.0)),
            MR,
            "no inversion time",
        ),
    ],
)
def test_each_sequence_condition_says_why_it_failed(
    rule: RoutingRule, facts: SeriesFacts, why: str
) -> None:
    assert rule.mismatch(facts) == why


@pytest.mark.parametrize(
    "rule",
    [
        RoutingRule("glioma_brats", "MR", contrast=True),
        RoutingRule("glioma_brats", "MR", scanning_sequence_includes=("ir", "GR")),
        RoutingRule("glioma_brats", "MR", echo_time_ms=(3.0, 3.0)),  # inclusive
        RoutingRule("glioma_brats", "MR", repetition_time_ms=(1000.0, 2000.0)),
        RoutingRule("glioma_brats", "MR", inversion_time_ms=(900.0, 1100.0)),
        RoutingRule("glioma_brats", "MR"),  # nothing set: any
    ],
)
def test_sequence_conditions_that_hold_match(rule: RoutingRule) -> None:
    assert rule.mismatch(POST) is None


def test_unset_sequence_conditions_match_a_series_without_the_values() -> None:
    assert RoutingRule("glioma_brats", "MR", contrast=False).mismatch(MR) is None
    assert RoutingRule("glioma_brats", "MR").mismatch(MR) is None


def test_sequence_conditions_come_after_the_header_ones() -> None:
    rule = RoutingRule("glioma_brats", "MR", min_slices=50, echo_time_ms=(0.0, 30.0))
    assert rule.mismatch(MR) == "40 slices, fewer than 50"


@pytest.mark.parametrize("limits", [(30.0, 0.0), (-1.0, 5.0), (0.0, float("inf"))])
def test_a_rule_refuses_a_bad_range(limits: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match="echo_time_ms must be"):
        RoutingRule("glioma_brats", "MR", echo_time_ms=limits)


def test_sequence_conditions_come_from_config() -> None:
    rule = {
        "task": "glioma_brats",
        "modality": "MR",
        "role": "flair",
        "contrast": False,
        "scanning_sequence_includes": ["ir"],
        "echo_time_ms": [70, 200.5],
        "repetition_time_ms": [5000, 12000],
        "inversion_time_ms": [1500, 3500],
    }
    (parsed,) = parse_config({"routing": {"rules": [rule]}}).routing
    assert parsed.contrast is False
    assert parsed.scanning_sequence_includes == ("IR",)
    assert parsed.echo_time_ms == (70.0, 200.5)
    assert parsed.repetition_time_ms == (5000.0, 12000.0)
    assert parsed.inversion_time_ms == (1500.0, 3500.0)
    (default,) = parse_config(
        {"routing": {"rules": [{"task": "liver_ct", "modality": "CT"}]}}
    ).routing
    assert default.contrast is None and default.scanning_sequence_includes == ()
    assert default.echo_time_ms is None and default.inversion_time_ms is None


RANGE_ERROR = "must be [low, high] with 0 <= low <= high"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("echo_time_ms", [30, 0], RANGE_ERROR),
        ("echo_time_ms", [-5, 10], RANGE_ERROR),
        ("echo_time_ms", [10], RANGE_ERROR),
        ("echo_time_ms", [1, 2, 3], RANGE_ERROR),
        ("repetition_time_ms", "2000", RANGE_ERROR),
        ("repetition_time_ms", [True, 5], RANGE_ERROR),
        ("inversion_time_ms", [0, "high"], RANGE_ERROR),
        ("inversion_time_ms", [0, float("nan")], RANGE_ERROR),
        ("contrast", "yes", "must be true or false"),
        ("scanning_sequence_includes", "IR", "must be a list of non-empty strings"),
    ],
)
def test_bad_sequence_conditions_name_their_key(key: str, value: object, message: str) -> None:
    rules = [
        {"task": "liver_ct", "modality": "CT"},
        {"task": "liver_ct", "modality": "CT"},
        {"task": "glioma_mr", "modality": "MR", key: value},
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config({"routing": {"rules": rules}})
    assert f"routing.rules[2].{key}: {message}" in str(caught.value)
