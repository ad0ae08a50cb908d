"""The Open Inference Protocol over HTTP, the platform against MLServer and a naive FastAPI app (``make bench``)."""

from .comparison import HttpOptions, in_bench, scenario, summary

__all__ = ["HttpOptions", "in_bench", "scenario", "summary"]
