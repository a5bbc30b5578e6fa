"""``appliance serve``: run the listener, scheduler, worker and outbox until stopped."""

from __future__ import annotations

from appliance.cli.common import ConfigOption, fail, load


def serve(config: ConfigOption = None) -> None:
    """Run the appliance until SIGTERM/SIGINT (config from --config or $APPLIANCE_CONFIG).

    Refuses to start (exit 1, one line) when the database is missing, empty or unreadable
    while the spool holds data, or when another `appliance serve` holds the database."""
    cfg = load(config)
    from appliance.errors import StoreError
    from appliance.ops.logs import configure_logging
    from appliance.service import Service

    configure_logging(cfg.logging.level, cfg.logging.format)
    try:
        service = Service(cfg)
    except StoreError as exc:
        raise fail(str(exc)) from None
    service.run_forever()
