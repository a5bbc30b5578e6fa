"""``appliance serve``: run the listener, scheduler, worker and outbox until stopped."""

from __future__ import annotations

from appliance.cli.common import ConfigOption, fail, load


def serve(config: ConfigOption = None) -> None:
    """Run the appliance until SIGTERM/SIGINT (config from --config or $APPLIANCE_CONFIG).

    The signal handlers come first, before the config, the heavy imports and the start-up
    steps, so a SIGTERM at any moment of start-up is a clean stop within seconds. Refuses
    to start (exit 1, one line) when the database is missing, empty or unreadable while
    the spool holds data, or when another `appliance serve` holds the database."""
    import logging
    import os
    import signal
    import threading
    from types import FrameType

    stop = threading.Event()

    def _early(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _early)
    signal.signal(signal.SIGINT, _early)
    cfg = load(config)
    from appliance.errors import StoreError
    from appliance.ops.logs import configure_logging

    configure_logging(cfg.logging.level, cfg.logging.format)
    logging.getLogger("appliance.service").info("appliance starting (pid %d)", os.getpid())
    if stop.is_set():
        logging.getLogger("appliance.service").info("stopped before start-up")
        return
    from appliance.service import Service

    try:
        service = Service(cfg, stop_event=stop)
    except StoreError as exc:
        raise fail(str(exc)) from None
    service.run_forever()
