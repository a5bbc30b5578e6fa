"""The site's models: ``registry`` (the bundle registry on disk joined with the store's
lifecycle rows: imports, shipped bundles, candidates, the worker's network cache) and
``gate`` (the validation gate on the site's held-out cases, which decides whether a
candidate becomes active)."""
