"""appliance/site_models."""
