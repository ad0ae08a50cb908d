"""The test services in one namespace, for the modules of the suite that import them from here.

Each has a module of its own: ``processes`` (waiting for and stopping them),
``redis_server``, ``postgres_server``, ``commands`` (``manage.py`` in a
subprocess and the demo data) and ``daphne``. The fixtures in
``tests/conftest.py`` turn ``ServiceUnavailable`` into a test failure, never a skip.
"""

from bench.servers import free_port, tail
from tests.support.commands import REPO_ROOT, CommandFailed, DemoData, manage, platform_env, prepare_demo_data
from tests.support.daphne import DAPHNE_START_TIMEOUT_S, DaphneServer, daphne_command, start_daphne
from tests.support.postgres_server import postgres_answers, throwaway_database
from tests.support.processes import ServiceUnavailable, stop_process, wait_until
from tests.support.redis_server import redis_answers
from tests.support.urls import with_path

__all__ = [
    "DAPHNE_START_TIMEOUT_S",
    "REPO_ROOT",
    "CommandFailed",
    "DaphneServer",
    "DemoData",
    "ServiceUnavailable",
    "daphne_command",
    "free_port",
    "manage",
    "platform_env",
    "postgres_answers",
    "prepare_demo_data",
    "redis_answers",
    "start_daphne",
    "stop_process",
    "tail",
    "throwaway_database",
    "wait_until",
    "with_path",
]
