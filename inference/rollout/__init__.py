"""Progressive rollout: a shadow version that sees a copy of live traffic, a canary that answers a share of it.

- ``plan``: what the registry says of a model's rollout (``Rollout``);
- ``routing``: which version answers a request, reproducibly from the request;
- ``shadow``: the copy of a request run on the shadow version after its reply is sent;
- ``compare``: how two versions' outputs for the same rows differ;
- ``changes``: setting, promoting and aborting a rollout, audited, the one way every entry point takes.
"""
