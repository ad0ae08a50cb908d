"""Retire a model version for good; the active one only together with its replacement."""

from django.core.management.base import BaseCommand

from inference import deployment
from inference.exceptions import InferenceError

from ._deploying import actor, add_actor_argument, address, refused


class Command(BaseCommand):
    help = (
        "Take VERSION of NAME out of service for good. The active version is retired only with "
        "--replacement N, which becomes active in the same step."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("version", type=int)
        parser.add_argument("--replacement", type=int, default=None,
                            help="The version to activate in its place, when retiring the active version.")
        add_actor_argument(parser)

    def handle(self, *args, name, version, replacement, **options):
        try:
            retired = deployment.retire(
                name, version, replacement=replacement,
                actor=actor(options["actor"]), source="command", address=address(),
            )
        except InferenceError as exc:
            raise refused(exc) from None
        serving = retired.model.active_version
        now = f"v{serving.version} serves" if serving else "no version is active"
        self.stdout.write(self.style.SUCCESS(f"{name}: retired v{retired.version}; {now}."))
