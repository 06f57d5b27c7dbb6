#!/usr/bin/env python3
"""Writes tests/spec/chat-completion-chunk.schema.json: the published
CreateChatCompletionStreamResponse schema from tests/spec/openai-openapi.yaml,
with its references inlined and OpenAPI's `nullable` made JSON Schema, for
the Rust property tests (src/protocol/proptests.rs), which have no YAML
reader. tests/test_schema_extract.py checks the file is current.

    .venv/bin/python scripts/extract_chunk_schema.py
"""
from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import schema  # noqa: E402  (tests/schema.py: the spec, nullable rewritten)

NAME = "CreateChatCompletionStreamResponse"
OUT = os.path.join(ROOT, "tests", "spec", "chat-completion-chunk.schema.json")


def inline(node, components, seen=()):
    if isinstance(node, list):
        return [inline(v, components, seen) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        if name in seen:
            raise SystemExit(f"recursive schema {name}: cannot inline")
        target = inline(components[name], components, seen + (name,))
        rest = {k: inline(v, components, seen) for k, v in node.items() if k != "$ref"}
        return {"allOf": [target, rest]} if rest else target
    return {k: inline(v, components, seen) for k, v in node.items()}


def extracted() -> str:
    components = schema.spec()["components"]["schemas"]
    body = inline(components[NAME], components)
    body = {"$schema": "https://json-schema.org/draft/2020-12/schema", **body}
    return json.dumps(body, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    with open(OUT, "w") as fh:
        fh.write(extracted())
    print(f"wrote {OUT}")
