"""Train and register the demo models; running it again changes nothing."""

from django.core.management.base import BaseCommand, CommandError

from inference.artifacts import register_version, save_keras, save_sklearn, verify_checksum
from inference.demo import DEMO_MODELS
from inference.exceptions import ArtifactError
from inference.models import MLModel

SUFFIX = {"sklearn": ".skops", "keras": ".keras"}


class Command(BaseCommand):
    help = "Train the demo models (iris, breast-cancer, diabetes, digits) and register them; idempotent."

    def add_arguments(self, parser):
        parser.add_argument("names", nargs="*", help="Only these demo models (default: all).")
        parser.add_argument(
            "--force", action="store_true", help="Train and register a new version even if one serves."
        )

    def handle(self, *args, names=(), force=False, **options):
        unknown = sorted(set(names) - set(DEMO_MODELS))
        if unknown:
            raise CommandError(f"Unknown demo model(s): {', '.join(unknown)}. Choose from {', '.join(DEMO_MODELS)}.")
        for name in names or DEMO_MODELS:
            self._ensure(name, force=force)

    def _ensure(self, name, *, force):
        mlmodel = MLModel.objects.filter(name=name).first()
        active = mlmodel.active_version if mlmodel else None
        if active is not None and not force:
            try:
                verify_checksum(active)
            except ArtifactError as exc:
                self.stderr.write(f"{name}: {exc} Training a new version.")
            else:
                self.stdout.write(f"{name}: v{active.version} already registered and intact.")
                return

        self.stdout.write(f"{name}: training…")
        trained = DEMO_MODELS[name]()
        if mlmodel is None:
            mlmodel = MLModel(
                name=name,
                task=trained.task,
                description=trained.description,
                inputs=trained.inputs,
                outputs=trained.outputs,
            )
            mlmodel.full_clean()
            mlmodel.save()
        elif mlmodel.inputs != trained.inputs or mlmodel.task != trained.task:
            raise CommandError(
                f"A model named {name!r} exists with a different schema; rename or delete it first."
            )
        number = (mlmodel.versions.order_by("-version").values_list("version", flat=True).first() or 0) + 1
        relative = f"demo/{name}/v{number}{SUFFIX[trained.framework]}"
        save = save_sklearn if trained.framework == "sklearn" else save_keras
        checksum = save(trained.estimator, relative)
        version = register_version(
            mlmodel,
            framework=trained.framework,
            artifact=relative,
            checksum=checksum,
            metadata={"classes": trained.classes, "source": "scikit-learn bundled data set"},
        )
        if version.version != number:
            raise CommandError(f"{name}: expected to register v{number}, got v{version.version}.")
        self.stdout.write(self.style.SUCCESS(f"{name}: registered v{version.version} ({relative})."))

