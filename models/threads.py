"""The process's CPU thread policy, decided once at start-up (``inference.threads``).

torch's default is one intra-op thread per core of the machine. When another process
holds a core, threads that spin while waiting for each other make inference several
times slower than one thread; with OpenMP's passive waiting (``OMP_WAIT_POLICY=PASSIVE``)
two threads cost nothing over one in that case and are faster on a quiet machine
(benchmarks/README.md, "Inference engine"). OpenMP reads the variable once, when it
initialises (on torch's first parallel region), so an entry point calls
:func:`passive_openmp_wait` before it imports torch, and
:func:`models.inference.apply_thread_policy` once its configuration is known. Torch-free,
so the configuration can use it.
"""

from __future__ import annotations

import os

from .errors import InputError

OMP_WAIT_POLICY = "OMP_WAIT_POLICY"
#: the most intra-op threads accepted (a sanity bound, not a tuning limit)
MAX_THREADS = 1024


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the machine's count where the
    platform has no affinity)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not on Linux
        return max(os.cpu_count() or 1, 1)


def passive_openmp_wait() -> None:
    """Ask OpenMP for passive waiting unless the environment already chose a policy.
    Has an effect only before OpenMP initialises (call it before importing torch)."""
    os.environ.setdefault(OMP_WAIT_POLICY, "PASSIVE")


def checked_threads(threads: object) -> int:
    """``threads`` when it is an integer in 1..MAX_THREADS; otherwise InputError."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS:
        raise InputError(
            f"inference threads must be an integer in 1..{MAX_THREADS}, not {threads!r}"
        )
    return threads
