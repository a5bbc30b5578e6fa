"""The lifecycle of a model version at a site: one vocabulary and its rules.

``candidate`` (new weights, e.g. after a federated run or an import) -> ``validated``
(passed the gate on local hold-out cases) -> ``active`` (used for inference; one per
task) -> ``retired`` (replaced). A candidate failing the gate is ``rejected``. Rollback
makes a ``retired`` version ``active`` again.

Torch-free on purpose: the appliance's store records these states and its CLI shows them
without loading the ML stack. Two kinds of move exist:

- a *state change* (:meth:`ModelState.can_become`): the gate's verdict, retiring a
  validated version; never to or from ``active``;
- an *activation* (:func:`activation_refusal`): the one way to ``active``; whichever
  version was active becomes ``retired`` in the same step.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class ModelState(StrEnum):
    """Lifecycle of a registered model version at this site (stored as text)."""

    CANDIDATE = "candidate"  # imported or new; not yet through the validation gate
    VALIDATED = "validated"  # passed the gate on local hold-out cases
    ACTIVE = "active"  # used for inference; exactly one per task
    REJECTED = "rejected"  # failed the gate
    RETIRED = "retired"  # was active, replaced; rollback can make it active again

    def can_become(self, new: ModelState | str) -> bool:
        """Whether a state change (not an activation) may move this state to ``new``."""
        return ModelState(new) in _STATE_CHANGES[self]


#: State changes outside activation. Becoming ACTIVE, and the active version becoming
#: RETIRED, happen only through an activation (:func:`activation_refusal`).
_STATE_CHANGES: Mapping[ModelState, frozenset[ModelState]] = MappingProxyType(
    {
        ModelState.CANDIDATE: frozenset({ModelState.VALIDATED, ModelState.REJECTED}),
        ModelState.VALIDATED: frozenset({ModelState.REJECTED, ModelState.RETIRED}),
        ModelState.ACTIVE: frozenset(),
        ModelState.RETIRED: frozenset(),
        ModelState.REJECTED: frozenset(),
    }
)


def activation_refusal(state: ModelState, *, forced: bool) -> str | None:
    """Why a version in ``state`` may not be activated, or ``None`` when it may.

    VALIDATED and RETIRED (rollback) may; a CANDIDATE only when ``forced`` (the
    validation gate is bypassed by an admin); never a REJECTED or the ACTIVE one.
    """
    if state is ModelState.ACTIVE:
        return "it is already active"
    if state is ModelState.REJECTED:
        return "it was rejected; it cannot be activated"
    if state is ModelState.CANDIDATE and not forced:
        return (
            "it is a candidate that has not passed validation; "
            "activate it with --force to bypass the validation gate"
        )
    return None
