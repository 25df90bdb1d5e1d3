"""The lower layer that ``methods/``, ``callbacks/`` and ``evaluation/`` import downward.

One module a concern: ``optim`` (the optimiser factory), ``schedules`` (learning-rate and momentum
schedules), ``steps`` (lr scaling and step counting from the Trainer), ``features`` (features out of a
step or a loader, gathering), ``knn`` (weighted kNN prediction), ``probe`` (the offline linear probe),
``statistics`` (representation statistics and the collapse thresholds), ``plotting`` (pictures) and
``compat`` (the few places that need Lightning internals).  Nothing here imports from ``methods``,
``callbacks``, ``evaluation`` or the CLIs.
"""
