"""The package's API in a whole process: the sink installed, and the log stopped at shutdown or at exit."""

from __future__ import annotations

import sqlite3

import pytest

from tests.support import services

EVENTS_SCRIPT = (
    "import time\n"
    "from monitoring import events\n"
    "from monitoring.events import PredictionEvent\n"
    "for number in range(250):\n"
    "    events.prediction(PredictionEvent(received_at=time.time(), model='iris', version=1, api_key='k',\n"
    "                                      request_id=f'{prefix}-{number}', rows=1, inputs=[[1.0, 2.0, 3.0, 4.0]],\n"
    "                                      outputs=[{'value': 1.0}], outcome='ok'))\n"
)


@pytest.fixture
def platform_env(tmp_path):
    """The environment of a platform process with a migrated SQLite database under ``tmp_path / "data"``."""
    env = services.platform_env(tmp_path / "data", {"PLATFORM_PRELOAD_MODELS": "0"})
    services.manage("migrate", "--no-input", env=env)
    return env


def test_shutdown_writes_the_records_in_memory_before_it_returns(platform_env, tmp_path):
    script = (
        "prefix = 'stop'\n" + EVENTS_SCRIPT
        + "import asyncio, sqlite3\n"
        "from django.conf import settings\n"
        "from monitoring import predictionlog\n"
        "asyncio.run(predictionlog.shutdown())\n"
        "with sqlite3.connect(settings.DATABASES['default']['NAME']) as connection:\n"
        "    print(connection.execute('SELECT COUNT(*) FROM monitoring_predictionrecord').fetchone()[0])\n"
    )
    result = services.manage("shell", "-c", script, env=platform_env)
    assert result.stdout.split()[-1] == "250"


def test_a_process_that_exits_without_its_shutdown_hooks_still_writes_its_records(tmp_path):
    from tests.support import services

    env = services.platform_env(tmp_path / "data", {"PLATFORM_PRELOAD_MODELS": "0"})
    services.manage("migrate", "--no-input", env=env)
    script = (
        "import time\n"
        "from monitoring import events\n"
        "from monitoring.events import PredictionEvent\n"
        "for number in range(250):\n"
        "    events.prediction(PredictionEvent(received_at=time.time(), model='iris', version=1, api_key='k',\n"
        "                                      request_id=f'exit-{number}', rows=1, inputs=[[1.0, 2.0, 3.0, 4.0]],\n"
        "                                      outputs=[{'value': 1.0}], outcome='ok'))\n"
    )
    services.manage("shell", "-c", script, env=env)
    with sqlite3.connect(tmp_path / "data" / "platform.sqlite3") as connection:
        ids = [row[0] for row in connection.execute("SELECT request_id FROM monitoring_predictionrecord")]
    assert sorted(ids) == sorted(f"exit-{number}" for number in range(250))

