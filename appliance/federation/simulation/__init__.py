"""The federated benchmark on simulated hospitals (``appliance federate simulate``):
``config`` (the benchmark's TOML), ``run`` (Flower's simulation runtime, one run per
strategy and seed), ``baselines`` (local-only and centralised training under the same
budget) and ``report`` (scores, targets, plots)."""
