"""Request bodies checked against the client libraries' own types.

GAPIC APIs: the body is parsed into the library's protobuf message with unknown fields rejected, as
GCP's front end does ("Invalid JSON payload received. Unknown name ..."). Discovery APIs (sqladmin, iam,
storage): the body is checked against the schema in googleapiclient's bundled discovery document.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from .errors import invalid


def _pb_class(message_cls: Any) -> type[Message]:
    # proto-plus wrappers expose the raw protobuf class through `.pb()`.
    if hasattr(message_cls, "pb") and not isinstance(message_cls, type(Message)):
        return message_cls.pb()
    if hasattr(message_cls, "meta") and hasattr(message_cls, "pb"):
        return message_cls.pb()
    return message_cls


def parse_proto(body: dict[str, Any], message_cls: Any, where: str = "") -> Message:
    """Parse a JSON body into the message type, refusing unknown fields and wrong types with 400."""
    msg = _pb_class(message_cls)()
    try:
        json_format.ParseDict(body, msg, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        text = str(exc)
        m = re.search(r'no field named "([^"]+)"', text)
        if m:
            field = m.group(1)
            raise invalid(
                f'Invalid JSON payload received. Unknown name "{field}"'
                f"{f' at {where!r}' if where else ''}: Cannot find field."
            ) from None
        raise invalid(f"Invalid JSON payload received. {text}") from None
    return msg


def normalize(body: dict[str, Any], message_cls: Any, where: str = "") -> dict[str, Any]:
    """Validate and return the canonical JSON form (camelCase, enum names) to store."""
    return json_format.MessageToDict(parse_proto(body, message_cls, where), preserving_proto_field_name=False)


def render(stored: dict[str, Any], message_cls: Any, enum_int: bool) -> dict[str, Any]:
    """Turn a stored resource into the response JSON, with enums as the client asked for them."""
    msg = _pb_class(message_cls)()
    json_format.ParseDict(stored, msg, ignore_unknown_fields=True)
    return json_format.MessageToDict(msg, preserving_proto_field_name=False, use_integers_for_enums=enum_int)


# --- discovery documents -------------------------------------------------------------------------------


@functools.cache
def discovery_document(api: str, version: str) -> dict[str, Any]:
    import googleapiclient

    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / f"{api}.{version}.json"
    return json.loads(path.read_text())


def validate_discovery(body: Any, api: str, version: str, schema: str, where: str = "body") -> None:
    """Check ``body`` against ``schema`` of the discovery document: unknown fields and wrong JSON types
    are refused with the 400 GCP sends."""
    doc = discovery_document(api, version)
    _check(body, {"$ref": schema}, doc["schemas"], where)


def _check(value: Any, spec: dict[str, Any], schemas: dict[str, Any], where: str) -> None:
    if "$ref" in spec:
        spec = schemas[spec["$ref"]]
    kind = spec.get("type")
    if value is None:
        return
    if kind == "object" or "properties" in spec:
        if not isinstance(value, dict):
            raise invalid(f"Invalid value at '{where}', expected an object.")
        props = spec.get("properties", {})
        extra = spec.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _check(item, props[key], schemas, f"{where}.{key}")
            elif extra is not None:
                _check(item, extra, schemas, f"{where}.{key}")
            else:
                raise invalid(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
    elif kind == "array":
        if not isinstance(value, list):
            raise invalid(f"Invalid value at '{where}', expected a list.")
        for i, item in enumerate(value):
            _check(item, spec.get("items", {}), schemas, f"{where}[{i}]")
    elif kind == "string":
        if spec.get("format") in ("int64", "uint64") and isinstance(value, int) and not isinstance(value, bool):
            # Proto3 JSON takes 64-bit integers as numbers too (google-cloud-storage sends some that way).
            return
        if not isinstance(value, str):
            raise invalid(f"Invalid value at '{where}' ({type(value).__name__}), expected a string.")
        if "enum" in spec and value not in spec["enum"]:
            raise invalid(f"Invalid value at '{where}' ({value!r}): not one of {', '.join(spec['enum'])}.")
        if spec.get("format") in ("int64", "uint64"):
            try:
                int(value)
            except ValueError:
                raise invalid(f"Invalid value at '{where}' ({value!r}), expected an integer.") from None
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise invalid(f"Invalid value at '{where}', expected an integer.")
        try:
            int(value)
        except ValueError:
            raise invalid(f"Invalid value at '{where}' ({value!r}), expected an integer.") from None
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise invalid(f"Invalid value at '{where}', expected a boolean.")
    elif kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise invalid(f"Invalid value at '{where}', expected a number.")
