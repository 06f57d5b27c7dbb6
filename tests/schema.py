"""Validate JSON bodies against component schemas of OpenAI's OpenAPI spec.

The spec (tests/spec/openai-openapi.yaml) declares OpenAPI 3.1 but still uses
the 3.0 keyword ``nullable: true`` in places. A JSON Schema 2020-12 validator
does not know that keyword, so before validating we rewrite it into a real
``null`` type (and add ``null`` to enums). The spec is about 3 MB of YAML: it
is loaded and converted once per process and cached.

Usage::

    from schema import assert_valid
    assert_valid("CreateChatCompletionResponse", body)
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "spec", "openai-openapi.yaml")
SPEC_URI = "urn:openai-openapi"

# Schemas the tests use; any other component name works too.
KNOWN = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
)

_lock = threading.Lock()


def _nullable_to_null(node: Any) -> Any:
    """Return a copy of ``node`` with OpenAPI 3.0 ``nullable`` rewritten.

    ``{"type": "string", "nullable": true}`` becomes
    ``{"type": ["string", "null"]}``; an ``enum`` also gets ``None``.
    A nullable schema without ``type`` (a ``$ref`` or ``anyOf`` with siblings)
    becomes ``{"anyOf": [<schema>, {"type": "null"}]}``.
    """
    if isinstance(node, list):
        return [_nullable_to_null(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable_to_null(v) for k, v in node.items()}
    flag = out.get("nullable")
    if not isinstance(flag, bool):
        # A property that happens to be *named* "nullable" (a dict value) is
        # left alone.
        return out
    del out["nullable"]
    if not flag:
        return out
    if "enum" in out and None not in out["enum"]:
        out["enum"] = list(out["enum"]) + [None]
    if "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        if "null" not in types:
            types = list(types) + ["null"]
        out["type"] = types
        return out
    return {"anyOf": [out, {"type": "null"}]}


def _stringify_keys(node: Any) -> Any:
    """YAML may produce non-string keys (e.g. numbers, booleans); JSON can't."""
    if isinstance(node, list):
        return [_stringify_keys(v) for v in node]
    if isinstance(node, dict):
        return {str(k) if not isinstance(k, str) else k: _stringify_keys(v) for k, v in node.items()}
    return node


@functools.lru_cache(maxsize=1)
def spec() -> dict:
    """The converted spec (cached: loaded once per process)."""
    with _lock:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        with open(SPEC_PATH, "rb") as fh:
            raw = yaml.load(fh, Loader=loader)
        return _nullable_to_null(_stringify_keys(raw))


@functools.lru_cache(maxsize=1)
def registry() -> Registry:
    resource = Resource.from_contents(spec(), default_specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@functools.lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    if name not in spec().get("components", {}).get("schemas", {}):
        raise KeyError(f"no component schema named {name!r} in {SPEC_PATH}")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"{SPEC_URI}#/components/schemas/{name}",
    }
    return Draft202012Validator(schema, registry=registry())


def component(name: str) -> dict:
    """A deep copy of one converted component schema (for inspection)."""
    return copy.deepcopy(spec()["components"]["schemas"][name])


def errors(name: str, body: Any) -> list[ValidationError]:
    """All validation errors of ``body`` against component ``name``."""
    return sorted(validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))


def is_valid(name: str, body: Any) -> bool:
    return validator(name).is_valid(body)


def assert_valid(name: str, body: Any) -> None:
    """Raise AssertionError with a readable explanation if ``body`` is invalid."""
    errs = errors(name, body)
    if not errs:
        return
    best = best_match(errs)
    lines = [f"body does not match #/components/schemas/{name}:"]
    for err in [best] + [e for e in errs if e is not best][:9]:
        where = "/".join(str(p) for p in err.absolute_path) or "<root>"
        lines.append(f"  at {where}: {err.message}")
        for sub in (err.context or [])[:4]:
            subwhere = "/".join(str(p) for p in sub.absolute_path) or "<root>"
            lines.append(f"      (alternative) at {subwhere}: {sub.message}")
    lines.append(f"  body: {body!r}"[:2000])
    raise AssertionError("\n".join(lines))


@functools.lru_cache(maxsize=1)
def _stream_event_names() -> dict[str, str]:
    """`type` of each Responses stream event -> its component schema."""
    out: dict[str, str] = {}
    union = spec()["components"]["schemas"]["ResponseStreamEvent"]
    for alt in union.get("anyOf") or union.get("oneOf") or []:
        ref = alt.get("$ref", "")
        name = ref.rsplit("/", 1)[-1]
        kind = spec()["components"]["schemas"].get(name, {}).get("properties", {}).get("type", {})
        for t in kind.get("enum", []):
            out[t] = name
    return out


def assert_valid_stream_event(event: Any) -> None:
    """Validates a Responses stream event against the schema of its own
    `type` (the union's errors name no field)."""
    name = _stream_event_names().get(event.get("type")) if isinstance(event, dict) else None
    if name is None:
        raise AssertionError(f"no ResponseStreamEvent schema has type {event.get('type')!r}: {event!r}"[:500])
    assert_valid(name, event)
