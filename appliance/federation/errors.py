"""Errors of the federation (subclasses of the appliance's one exception base)."""

from __future__ import annotations

from appliance.errors import ApplianceError


class FederationError(ApplianceError):
    """A federated run could not be configured, started, or completed."""
