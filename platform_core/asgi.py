"""ASGI entry point: HTTP goes to Django, WebSockets to the streaming consumers.

HTTP under ``/v2`` (the Open Inference Protocol) is answered by
``streaming.oip`` in front of Django, without Django's request machinery.

Importing this module loads and warms up every active model version before the
server starts accepting connections (daphne imports the application first), so
the platform reports ready only when its models can answer.
"""

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "platform_core.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from platform_core.lifecycle import on_shutdown  # noqa: E402
from platform_core.routing import websocket_application  # noqa: E402
from streaming.oip.app import OpenInferenceApp  # noqa: E402
from streaming.oip.infer import inferences  # noqa: E402

# The process's infer requests, shared with the gRPC service (--grpc-port).
open_inference_app = OpenInferenceApp(django_asgi_app, inferences)
# Before the WebSocket connections drain (order 10): from then on /v2/health/ready says 503.
on_shutdown(open_inference_app.drain, order=9)

application = ProtocolTypeRouter(
    {
        "http": open_inference_app,
        "websocket": websocket_application,
    }
)

if settings.PLATFORM_PRELOAD_MODELS:
    from inference.service import get_service  # noqa: E402

    get_service().load_all()

from platform_core.wiring import start_serving  # noqa: E402

start_serving()

# Everything loaded so far (Django, TensorFlow, the models) lives as long as
# the process. Moving it out of the collector's reach keeps full collections,
# which the prediction log's short-lived records set off, from scanning a heap
# of millions of permanent objects (docs/benchmarks.md has the pause it saves).
if settings.PLATFORM_GC_FREEZE:
    gc.collect()
    gc.freeze()
