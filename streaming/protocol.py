"""Frames of the streaming prediction protocol, version 1: decoding, checking and encoding.

Text frames carry JSON, binary frames MessagePack; a reply is encoded the way
its request was. See ``docs/protocol.md`` for where the platform fills in what
the protocol leaves open.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgpack
import orjson

from inference.codec import DecodeError, loads_json, loads_msgpack
from inference.outcomes import Outcome

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 128
# Integer ids are echoed as they came; beyond 64 bits MessagePack cannot carry them.
_MIN_INT_ID, _MAX_INT_ID = -(2**63), 2**63 - 1

REQUEST_TYPES = frozenset({"predict", "ping", "models", "auth"})


class ProtocolError(Exception):
    """A frame that cannot be served, with the protocol's error code and the request id if known."""

    def __init__(self, code: str, message: str, request_id: Any = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.extra = extra
        #: The model version the request resolved to, when it got that far.
        self.entry: Any = None


@dataclass(slots=True)
class Frame:
    """One decoded client frame."""

    body: dict[str, Any]


def decode(text: str | None, data: bytes | None) -> Frame:
    """Parse a text (JSON) or binary (MessagePack) frame into a dict."""
    if text is not None:
        binary = False
        try:
            body = loads_json(text)
        except DecodeError as exc:
            raise ProtocolError(Outcome.INVALID_JSON, str(exc)) from None
    elif data is not None:
        binary = True
        try:
            body = loads_msgpack(data)
        except DecodeError as exc:
            raise ProtocolError(Outcome.INVALID_JSON, str(exc)) from None
    else:
        raise ProtocolError(Outcome.INVALID_JSON, "The frame is empty.")
    if type(body) is not dict:
        kind = "MessagePack map" if binary else "JSON object"
        raise ProtocolError(Outcome.INVALID_JSON, f"The frame must be a {kind}.")
    return Frame(body)


def request_id(body: dict[str, Any]) -> Any:
    """Return the frame's id if it is valid, else raise ``invalid_request`` (with a null id)."""
    rid = body.get("id")
    if rid is None:
        return None
    if type(rid) is str:
        if len(rid) > MAX_ID_LENGTH:
            raise ProtocolError(Outcome.INVALID_REQUEST, f"id must be at most {MAX_ID_LENGTH} characters.")
        if not rid.isascii() and not _is_unicode(rid):
            # JSON's \ud800 escapes parse to lone surrogates, which no reply can carry.
            raise ProtocolError(Outcome.INVALID_REQUEST, "id must be valid Unicode text (no lone surrogates).")
        return rid
    if type(rid) is int:
        if not _MIN_INT_ID <= rid <= _MAX_INT_ID:
            raise ProtocolError(Outcome.INVALID_REQUEST, "An integer id must fit in 64 bits.")
        return rid
    raise ProtocolError(Outcome.INVALID_REQUEST, "id must be a string or an integer.")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def frame_type(body: dict[str, Any], rid: Any) -> str:
    kind = body.get("type", "predict")
    if type(kind) is not str or kind not in REQUEST_TYPES:
        raise ProtocolError(
            "invalid_request", f"Unknown type {kind!r}; expected one of predict, ping, models, auth.", rid
        )
    return kind


@dataclass(slots=True)
class PredictRequest:
    id: Any
    model: str
    version: int | None
    inputs: Any


def predict_request(body: dict[str, Any], rid: Any, default_model: str | None) -> PredictRequest:
    """Check a predict frame's fields (not its rows, which the model's schema checks)."""
    model = body.get("model", default_model)
    if model is None:
        raise ProtocolError(Outcome.INVALID_REQUEST, "model is required on this endpoint.", rid)
    if type(model) is not str:
        raise ProtocolError(Outcome.INVALID_REQUEST, "model must be a string.", rid)
    version = body.get("version")
    if version is not None and (type(version) is not int or version < 1):
        raise ProtocolError(Outcome.INVALID_REQUEST, "version must be a positive integer.", rid)
    if "inputs" not in body:
        raise ProtocolError(Outcome.INVALID_REQUEST, "inputs is required.", rid)
    inputs = body["inputs"]
    if type(inputs) is not list:
        raise ProtocolError(Outcome.INVALID_REQUEST, "inputs must be a list of rows.", rid)
    return PredictRequest(rid, model, version, inputs)


def _json_default(value: Any) -> Any:
    # numpy scalars that slipped through; everything else is a bug worth seeing.
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"Cannot encode {type(value).__name__} in a reply.")


def encode(message: dict[str, Any], binary: bool) -> tuple[str | None, bytes | None]:
    """Encode a reply the way its request was encoded: (text, None) or (None, bytes)."""
    payload = encode_bytes(message, binary)
    return (None, payload) if binary else (payload.decode(), None)


def encode_bytes(message: dict[str, Any], binary: bool) -> bytes:
    """Encode a reply the way its request was encoded, as the frame's payload (UTF-8 JSON or MessagePack)."""
    if binary:
        return msgpack.packb(message, use_bin_type=True, default=_json_default)
    try:
        return orjson.dumps(message, default=_json_default)
    except TypeError:
        # Text orjson will not write (a lone surrogate echoed from the client's
        # frame): the standard encoder escapes it, and the reply stays valid JSON.
        return json.dumps(message, default=_json_default, ensure_ascii=True, separators=(",", ":")).encode()


def error(code: str, message: str, rid: Any = None, **extra: Any) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    err.update(extra)
    return {"type": "error", "id": rid, "error": err}
