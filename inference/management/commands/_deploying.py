"""What the deployment commands share: who is making the change, and how a refusal reads."""

from __future__ import annotations

import getpass
import socket

from django.core.management.base import CommandError

from inference.exceptions import InferenceError


def add_actor_argument(parser) -> None:
    parser.add_argument(
        "--actor", default="",
        help="Who makes the change, for the audit (default: the login name running the command).",
    )


def actor(given: str) -> str:
    if given:
        return given
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "command"


def address() -> str:
    """The machine the command runs on: the audit's "from where" for changes made on the command line."""
    return socket.gethostname()


def refused(exc: InferenceError) -> CommandError:
    """The error a command exits with (status 1): the domain error's sentence, without a traceback."""
    return CommandError(str(exc))
