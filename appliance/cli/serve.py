"""``appliance serve``: run the listener, scheduler, worker and outbox until stopped."""

from __future__ import annotations

from appliance.cli.common import ConfigOption, load


def serve(config: ConfigOption = None) -> None:
    """Run the appliance until SIGTERM/SIGINT (config from --config or $APPLIANCE_CONFIG)."""
    cfg = load(config)
    from appliance.ops.logs import configure_logging
    from appliance.service import Service

    configure_logging(cfg.logging.level, cfg.logging.format)
    Service(cfg).run_forever()
