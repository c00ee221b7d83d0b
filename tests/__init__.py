"""jupyter-tt's tests: ``make test`` runs them; helpers they share are in ``tests.support``."""
