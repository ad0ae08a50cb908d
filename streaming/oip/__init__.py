"""The Open Inference Protocol (KServe v2) over HTTP, served from the same pool as the WebSocket stream.

``codec`` turns the protocol's tensors into rows and a model's output into
tensors, ``metadata`` describes the server and its models, ``keys`` caches
API-key lookups, and ``app`` is the ASGI application that routes ``/v2``
in front of Django's.
"""
