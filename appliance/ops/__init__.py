"""Running for months: ``health`` (``/healthz`` checks), ``metrics`` (Prometheus
``/metrics``, counted from the store), ``http`` (the endpoint serving both), ``status``
(``appliance status``), ``logs`` (text or JSON log lines) and ``retention`` (the purge
plan and loop: what may leave the disk, and why)."""
