"""The monitoring admin: the prediction log for auditors, and each model version's traffic in the registry's pages."""

from . import predictions, traffic

traffic.register()

__all__ = ["predictions", "traffic"]
