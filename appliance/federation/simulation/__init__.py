"""appliance/federation/simulation."""
