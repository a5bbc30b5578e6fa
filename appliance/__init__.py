"""The appliance service: config, store, routing, pipeline, worker, scheduler, CLI."""

__version__ = "0.1.0"
