"""Settings for the test suite: the project's own settings on the embedded defaults.

The suite runs in debug mode on SQLite and the in-memory channel layer, with
every file under a temporary directory of its own. ``DATABASE_URL`` and
``REDIS_URL`` are hidden while the settings are read, so a developer's shell
cannot point the suite at a shared server; the service fixtures still read them
to find a PostgreSQL or Redis to reuse.
"""

import atexit
import os
import shutil
import tempfile

_RUN_DIR = tempfile.mkdtemp(prefix="platform-tests-")
atexit.register(shutil.rmtree, _RUN_DIR, ignore_errors=True)

os.environ["DJANGO_DEBUG"] = "1"
os.environ["PLATFORM_DATA_DIR"] = os.path.join(_RUN_DIR, "data")
os.environ["PLATFORM_MODEL_STORE"] = os.path.join(_RUN_DIR, "data", "models")
os.environ["PLATFORM_PRELOAD_MODELS"] = "0"
# The test process's consumers must not write the prediction log from a
# background thread into the shared test database; the log's own tests make
# their own writers, and server processes started by tests keep it on.
os.environ["PLATFORM_LOG_ENABLED"] = "0"

_hidden = {name: os.environ.pop(name) for name in ("DATABASE_URL", "REDIS_URL") if name in os.environ}
try:
    from platform_core.settings import *  # noqa: E402, F403
finally:
    os.environ.update(_hidden)
