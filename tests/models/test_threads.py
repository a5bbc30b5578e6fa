"""The process's thread policy (models.threads)."""

from __future__ import annotations

import os

import pytest
import torch

from models.errors import InputError
from models.inference import apply_thread_policy
from models.threads import OMP_WAIT_POLICY, passive_openmp_wait, usable_cores


def test_usable_cores_is_the_affinity_of_this_process() -> None:
    assert usable_cores() == len(os.sched_getaffinity(0)) >= 1


def test_apply_thread_policy_sets_torchs_threads_and_refuses_nonsense() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_thread_policy(1) == 1
        assert torch.get_num_threads() == 1
        for bad in (0, -2, 1.5, True, 5000):
            with pytest.raises(InputError, match=r"1\.\.1024"):
                apply_thread_policy(bad)  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(before)


def test_passive_wait_is_asked_for_unless_the_environment_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(OMP_WAIT_POLICY, raising=False)
    passive_openmp_wait()
    assert os.environ[OMP_WAIT_POLICY] == "PASSIVE"
    monkeypatch.setenv(OMP_WAIT_POLICY, "ACTIVE")
    passive_openmp_wait()
    assert os.environ[OMP_WAIT_POLICY] == "ACTIVE"
