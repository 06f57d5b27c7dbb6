"""The chunk schema the Rust property tests validate against is the
published one: tests/spec/chat-completion-chunk.schema.json must be what
scripts/extract_chunk_schema.py makes of tests/spec/openai-openapi.yaml."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_extracted_chunk_schema_is_current():
    path = os.path.join(ROOT, "scripts", "extract_chunk_schema.py")
    spec = importlib.util.spec_from_file_location("extract_chunk_schema", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with open(module.OUT) as fh:
        committed = fh.read()
    assert committed == module.extracted(), "run scripts/extract_chunk_schema.py and commit the result"
    assert '"chat.completion.chunk"' in committed
