"""The monitoring admin: the prediction log and the shadow comparisons for auditors, and each model version's
traffic and comparisons in the registry's pages."""

from . import comparisons, predictions, traffic

traffic.register()

__all__ = ["comparisons", "predictions", "traffic"]
