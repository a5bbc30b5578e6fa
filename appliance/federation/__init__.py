"""Federated fine-tuning with other hospitals: the only place that imports flwr.

Production code (run settings, the Flower ServerApp/ClientApp, strategies, the site's
join and hand-off of a run's weights to the validation gate) and, in ``simulation/``,
the benchmark that runs every strategy on simulated hospitals.
"""
