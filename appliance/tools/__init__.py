"""appliance/tools."""
