"""WebSocket routing: the protocol's endpoints, each behind the handshake's Origin check."""

from channels.auth import AuthMiddlewareStack
from channels.routing import URLRouter
from channels.security.websocket import WebsocketDenier
from django.urls import path, re_path

from frontend.consumers import DashboardConsumer
from streaming.auth import PlatformOriginValidator
from streaming.consumers import PredictConsumer


def predict_endpoint(application):
    # Prediction clients authenticate with an API key, so a handshake without
    # an Origin (a server-side client) is allowed; a browser's must be allowed.
    return PlatformOriginValidator(application, allow_missing=True)


websocket_urlpatterns = [
    path("ws/v1/predict/", predict_endpoint(PredictConsumer.as_asgi())),
    re_path(r"^ws/v1/predict/(?P<model>[^/]+)/$", predict_endpoint(PredictConsumer.as_asgi())),
    # The dashboard rides on the browser's session cookie, so its handshake
    # must carry an allowed Origin (no cross-site WebSocket hijacking).
    path("ws/v1/dashboard/", PlatformOriginValidator(AuthMiddlewareStack(DashboardConsumer.as_asgi()),
                                                     allow_missing=False)),
]

websocket_application = URLRouter(
    websocket_urlpatterns
    # Anything else is refused at the handshake rather than left to error.
    + [re_path(r"", WebsocketDenier.as_asgi())]
)
