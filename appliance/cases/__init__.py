"""appliance/cases."""
