"""Fixtures and helpers of the dashboard tests: users, an aggregator of the test's own, real servers."""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.monitoring.livestats_fixtures import IRIS_FEATURES, IRIS_ROW, prediction  # noqa: F401
from tests.support import services
from tests.support.services import REPO_ROOT, DaphneServer, manage

PASSWORD = "correct-horse-battery-staple"

CHROMIUM = "/usr/bin/chromium"
# This machine has no internet: nothing Chromium would fetch on its own.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def artifacts_dir() -> Path:
    """Where the browser tests save their screenshots: $PLATFORM_TEST_ARTIFACTS or test-artifacts/."""
    path = Path(os.environ.get("PLATFORM_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts") / "frontend"
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- in the test process -----------------------------------------------------------------


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("operator", password=PASSWORD, is_staff=True)


@pytest.fixture
def plain_user(django_user_model):
    return django_user_model.objects.create_user("customer", password=PASSWORD)


# -- real server processes -------------------------------------------------------------------


def create_user(server: DaphneServer, username: str, *, staff: bool, password: str = PASSWORD) -> None:
    """Create a user in the server's own database."""
    code = (
        "from django.contrib.auth import get_user_model; "
        f"get_user_model().objects.create_user({username!r}, password={password!r}, is_staff={staff!r})"
    )
    manage("shell", "-c", code, env=server.env)


def create_api_key(server: DaphneServer, name: str) -> str:
    return manage("create_api_key", name, env=server.env).stdout.strip()


def login(server: DaphneServer, username: str, password: str = PASSWORD) -> str:
    """Log in through the login form over HTTP; return the session cookie as a Cookie header value."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(f"{server.url}/login/", timeout=10) as response:
        page = response.read().decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    form = urllib.parse.urlencode(
        {"username": username, "password": password, "csrfmiddlewaretoken": token, "next": "/"}
    )
    request = urllib.request.Request(f"{server.url}/login/", data=form.encode(),
                                     headers={"Referer": f"{server.url}/login/", "Origin": server.url})
    with opener.open(request, timeout=10) as response:
        if response.url.rstrip("/") != server.url:
            raise AssertionError(f"Logging in as {username} ended at {response.url}, not the dashboard.")
    cookies = {cookie.name: cookie.value for cookie in jar}
    return f"sessionid={cookies['sessionid']}"


def restart(server: DaphneServer, *, timeout_s: float = services.DAPHNE_START_TIMEOUT_S) -> DaphneServer:
    """Stop ``server`` and start it again on the same port and data; the caller stops the new one."""
    server.stop()
    with open(server.log, "ab") as output:
        process = subprocess.Popen(
            services.daphne_command(server.port), cwd=REPO_ROOT, env=server.env,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )
    again = DaphneServer(port=server.port, env=server.env, log=server.log, process=process)
    try:
        again.wait_until_healthy(timeout_s)
    except services.ServiceUnavailable:
        again.stop()
        raise
    return again
