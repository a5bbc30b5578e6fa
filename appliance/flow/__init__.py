"""appliance/flow."""
