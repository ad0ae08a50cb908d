"""Register a model artifact as a new version (validated first), optionally creating the model and activating it."""

import json

from django.core.management.base import BaseCommand, CommandError

from inference import deployment
from inference.exceptions import InferenceError
from inference.models import MLModel

from ._deploying import actor, add_actor_argument, address, refused


def _names(raw):
    return [name.strip() for name in raw.split(",") if name.strip()] if raw else None


class Command(BaseCommand):
    help = (
        "Validate a model artifact and register it as the next version of NAME (staged unless --activate). "
        "For a new model, also give --task, --inputs and --outputs. Exits non-zero with the reason if the "
        "artifact is refused (it is then recorded as a failed version)."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="The model's name (created if new, with --task, --inputs, --outputs).")
        parser.add_argument("--artifact", required=True, help="The file: a .skops archive or a .keras file.")
        parser.add_argument("--framework", required=True, choices=["sklearn", "keras"])
        parser.add_argument("--activate", action="store_true", help="Serve it once it has passed validation.")
        parser.add_argument("--classes", default="", help="Comma-separated class labels, one per probability "
                            "column (needed for a Keras classifier; a scikit-learn one knows its own).")
        schema = parser.add_argument_group("a new model's schema")
        schema.add_argument("--task", choices=[choice for choice, _ in MLModel.Task.choices])
        schema.add_argument("--inputs", default="", help="Comma-separated feature names, in the model's order.")
        schema.add_argument("--outputs", default="", help="What each output row holds.")
        schema.add_argument("--description", default="")
        schema.add_argument("--sample-inputs", default="", help="JSON list of typical input rows, used to probe "
                            "every new version.")
        add_actor_argument(parser)

    def handle(self, *args, name, artifact, framework, activate, classes, task, inputs, outputs, description,
               sample_inputs, **options):
        schema = None
        if task or inputs or outputs:
            if not (task and inputs and outputs):
                raise CommandError("A new model needs all of --task, --inputs and --outputs.")
            try:
                samples = json.loads(sample_inputs) if sample_inputs else None
            except ValueError as exc:
                raise CommandError(f"--sample-inputs is not valid JSON: {exc}.") from None
            schema = deployment.ModelSchema(task=task, inputs=_names(inputs), outputs=outputs,
                                            description=description, sample_inputs=samples)
        existed = MLModel.objects.filter(name=name).exists()
        try:
            version = deployment.register(
                name, artifact, framework, activate=activate, classes=_names(classes), schema=schema,
                actor=actor(options["actor"]), source="command", address=address(),
            )
        except InferenceError as exc:
            raise refused(exc) from None
        if schema is not None and not existed:
            self.stdout.write(f"Created model {name} ({schema.task}, {len(schema.inputs or [])} inputs).")
        state = "now active" if version.is_active else (
            f"staged; serve it with `manage.py activate_version {name} {version.version}`"
        )
        self.stdout.write(self.style.SUCCESS(
            f"{name}: registered v{version.version} ({framework}, {version.size_bytes} bytes, "
            f"sha256 {version.checksum[:12]}…), {state}."
        ))
