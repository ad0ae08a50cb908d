"""Signals of the model registry."""

from django.dispatch import Signal

#: Sent (after the transaction commits) whenever what a model serves may have changed: a version
#: registered, activated, rolled back or retired. Arguments: ``model`` (the name) and ``action``.
#: The composition root tells every server process, which reconcile their pools with the registry.
catalog_changed = Signal()
