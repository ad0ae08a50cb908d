"""Activate a model version, or roll back to the version that served before."""

from django.core.management.base import BaseCommand, CommandError

from inference import deployment
from inference.exceptions import InferenceError

from ._deploying import actor, add_actor_argument, address, refused


class Command(BaseCommand):
    help = (
        "Make VERSION the active version of NAME (every server process switches to it), or with --rollback "
        "activate the version that was active before the current one."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("version", nargs="?", type=int, help="The version number to activate.")
        parser.add_argument("--rollback", action="store_true", help="Activate the previously active version.")
        add_actor_argument(parser)

    def handle(self, *args, name, version, rollback, **options):
        if (version is None) == (not rollback):
            raise CommandError("Give either a VERSION to activate or --rollback, not both and not neither.")
        who = {"actor": actor(options["actor"]), "source": "command", "address": address()}
        try:
            previous = deployment.get_model(name).active_version
            if rollback:
                active = deployment.rollback(name, **who)
            else:
                active = deployment.activate(name, version, **who)
        except InferenceError as exc:
            raise refused(exc) from None
        if previous is not None and previous.pk == active.pk:
            self.stdout.write(f"{name}: v{active.version} was already active; nothing changed.")
            return
        was = f"v{previous.version}" if previous else "no active version"
        verb = "rolled back to" if rollback else "activated"
        self.stdout.write(self.style.SUCCESS(f"{name}: {verb} v{active.version} (was {was})."))
