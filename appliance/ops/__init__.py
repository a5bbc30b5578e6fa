"""appliance/ops."""
