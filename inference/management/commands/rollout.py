"""Roll a model version out in steps: a shadow that sees a copy of traffic, a canary that answers a share of it."""

from django.core.management.base import BaseCommand, CommandError

from inference.exceptions import InferenceError
from inference.rollout import changes

from ._deploying import actor, add_actor_argument, address, refused


def _describe(model):
    parts = []
    if model.shadow_version is not None:
        parts.append(f"shadow v{model.shadow_version} at {model.shadow_sample_pct:g}% of requests")
    if model.canary_version is not None:
        parts.append(f"canary v{model.canary_version} answering {model.canary_weight_pct:g}% of requests")
    return "; ".join(parts) or "no rollout"


class Command(BaseCommand):
    help = (
        "Set NAME's shadow version (--shadow VERSION [--sample PCT]) or canary version (--canary VERSION "
        "--weight PCT), make the canary (or the shadow) the active version (--promote), or end the rollout "
        "(--abort). Every server process follows within its reconcile interval, at once where the channel "
        "layer reaches it."
    )

    def add_arguments(self, parser):
        parser.add_argument("name")
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--shadow", type=int, metavar="VERSION",
                            help="Copy requests to this version; its answers are compared, never sent.")
        action.add_argument("--canary", type=int, metavar="VERSION",
                            help="Let this version answer a share of the requests naming no version.")
        action.add_argument("--promote", action="store_true",
                            help="Make the canary (or, with none, the shadow) the active version.")
        action.add_argument("--abort", action="store_true", help="Remove the shadow and the canary.")
        parser.add_argument("--sample", type=float, default=100.0, metavar="PCT",
                            help="With --shadow: the percentage of requests copied (default 100).")
        parser.add_argument("--weight", type=float, metavar="PCT",
                            help="With --canary: the percentage of requests it answers.")
        parser.add_argument("--max-error-pct", type=float, metavar="PCT",
                            help="With --canary: abort it automatically past this percentage of server errors.")
        parser.add_argument("--max-p99-ms", type=float, metavar="MS",
                            help="With --canary: abort it automatically when its p99 latency passes this.")
        add_actor_argument(parser)

    def handle(self, *args, name, shadow, canary, promote, abort, sample, weight, **options):
        if canary is not None and weight is None:
            raise CommandError("--canary needs --weight PCT: the percentage of requests the canary answers.")
        if canary is None and (weight is not None or options["max_error_pct"] is not None
                               or options["max_p99_ms"] is not None):
            raise CommandError("--weight, --max-error-pct and --max-p99-ms go with --canary.")
        who = {"actor": actor(options["actor"]), "source": "command", "address": address()}
        try:
            if shadow is not None:
                model = changes.set_shadow(name, shadow, sample_pct=sample, **who)
            elif canary is not None:
                limits = {key: options[key] for key in ("max_error_pct", "max_p99_ms") if options[key] is not None}
                model = changes.set_canary(name, canary, weight_pct=weight, **who, **limits)
            elif promote:
                version = changes.promote(name, **who)
                self.stdout.write(self.style.SUCCESS(f"{name}: promoted v{version.version} to active."))
                return
            else:
                model = changes.abort(name, **who)
        except InferenceError as exc:
            raise refused(exc) from None
        self.stdout.write(self.style.SUCCESS(f"{name}: {_describe(model)}."))
