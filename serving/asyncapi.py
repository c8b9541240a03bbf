"""The AsyncAPI 2.6 document of the websocket channels, generated from :mod:`serving.messages`.

FastAPI describes REST in OpenAPI but cannot describe websockets; this document does, and it is
served at ``/asyncapi.json``. :func:`message_validator` checks a message against the document
(the tests run it on every message the server really sent).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import jsonschema
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving import messages as m

REF = "#/components/schemas/{model}"

CREW_OUT: tuple[type[BaseModel], ...] = (
    m.SuggestionMsg,
    m.SuggestionUpdateMsg,
    m.SuggestionRetractedMsg,
    m.SnapshotMsg,
    m.ErrorMsg,
    m.HeartbeatMsg,
    m.CrewTrackMsg,
    m.CrewPredictionMsg,
)
CREW_IN: tuple[type[BaseModel], ...] = (
    m.AuthMsg,
    m.ResumeMsg,
    m.PositionMsg,
    m.StatusMsg,
    m.AcceptMsg,
    m.DeclineMsg,
    m.InPositionMsg,
    m.ContactMsg,
)
OPERATOR_OUT: tuple[type[BaseModel], ...] = (
    m.SightingEventMsg,
    m.TrackMsg,
    m.PredictionMsg,
    m.CrewMsg,
    m.SuggestionOpMsg,
    m.PlanMsg,
    m.IncidentMsg,
    m.DecisionMsg,
    m.SnapshotMsg,
    m.ErrorMsg,
    m.HeartbeatMsg,
)
OPERATOR_IN: tuple[type[BaseModel], ...] = (
    m.AuthMsg,
    m.ResumeMsg,
    m.ApproveMsg,
    m.ModifyMsg,
    m.RetractMsg,
    m.OperatorSightingMsg,
    m.WatchMsg,
)

_CHANNELS: dict[str, tuple[str, tuple[type[BaseModel], ...], tuple[type[BaseModel], ...]]] = {
    "/ws/crew": (
        "One crew tablet, authenticated as that crew (``?token=`` or a first ``auth`` message). "
        "Server messages carry the crew stream's ``seq``; reconnect with ``?last_seq=N`` or send "
        "``resume`` to get what was missed, or a ``snapshot`` when the gap is too old. "
        "``error``, ``heartbeat`` (every 10 s), and the ``track`` / ``prediction`` of an incident the "
        "crew holds a suggestion for carry no ``seq``: they are not part of the stream.",
        CREW_OUT,
        CREW_IN,
    ),
    "/ws/operator": (
        "An operator console: everything in the operator's communes. ``seq`` is per connection; "
        "after a reconnect the console gets a fresh ``snapshot``. ``error`` and ``heartbeat`` "
        "(every 10 s) carry no ``seq``.",
        OPERATOR_OUT,
        OPERATOR_IN,
    ),
}


_BATCH_NOTE = (
    " With ``?batch=1`` a frame may hold several messages: a JSON array of them, in order "
    "(the messages queued together for the connection; one over 16 kB has a frame of its own)."
)
_BATCH_QUERY: dict[str, Any] = {
    "type": "boolean",
    "default": False,
    "description": "Frames may carry a JSON array of messages (in order) instead of one message.",
}


def _message_name(model: type[BaseModel], direction: str) -> str:
    return (
        f"{model.__name__}{direction}" if model in (m.AuthMsg, m.ResumeMsg) and direction else model.__name__
    )


@cache
def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 2.6 document (JSON-ready)."""
    models = sorted(
        {mod for _desc, out, inc in _CHANNELS.values() for mod in (*out, *inc)}, key=lambda t: t.__name__
    )
    _, top = models_json_schema([(mod, "serialization") for mod in models], ref_template=REF)
    schemas: dict[str, Any] = dict(top.get("$defs", {}))
    messages: dict[str, Any] = {}
    for mod in models:
        messages[mod.__name__] = {
            "name": mod.__name__,
            "title": mod.__name__,
            "summary": (mod.__doc__ or mod.__name__).strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": REF.format(model=mod.__name__)},
        }
    channels: dict[str, Any] = {}
    for path, (description, out, inc) in _CHANNELS.items():
        query: dict[str, Any] = {"batch": _BATCH_QUERY}
        if path == "/ws/crew":
            query["last_seq"] = {"type": "integer", "description": "Resume after this crew seq."}
        channels[path] = {
            "description": description + _BATCH_NOTE,
            "bindings": {"ws": {"query": {"type": "object", "properties": query}}},
            "subscribe": {
                "summary": "Messages the server sends",
                "message": {"oneOf": [{"$ref": f"#/components/messages/{mod.__name__}"} for mod in out]},
            },
            "publish": {
                "summary": "Messages the client sends",
                "message": {"oneOf": [{"$ref": f"#/components/messages/{mod.__name__}"} for mod in inc]},
            },
        }
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "Cordon websockets",
            "version": "0.1.0",
            "description": "Crew tablets and operator consoles. Every server message has type, seq, sent_at.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"schemas": schemas, "messages": messages},
    }


def message_validator(channel: str, direction: str = "subscribe") -> jsonschema.protocols.Validator:
    """A jsonschema validator of the messages of ``channel`` (``/ws/crew`` or ``/ws/operator``) in
    ``direction`` (``subscribe``: server → client; ``publish``: client → server), resolving the
    document's references."""
    doc = asyncapi_document()
    refs = doc["channels"][channel][direction]["message"]["oneOf"]
    names = [r["$ref"].rsplit("/", 1)[1] for r in refs]
    schema = {
        "oneOf": [{"$ref": REF.format(model=name)} for name in names],
        "components": doc["components"],
    }
    cls = jsonschema.validators.validator_for({"$schema": "https://json-schema.org/draft/2020-12/schema"})
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator
