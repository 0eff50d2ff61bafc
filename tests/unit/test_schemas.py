"""The committed JSON Schemas match the models (run `make schemas` after changing a model)."""

from __future__ import annotations

from pathlib import Path

import orjson

from consumer.devkit.schemas import SCHEMA_DIR, generate, stale, write
from tests.unit.helpers import SAMPLES


def test_committed_schemas_are_up_to_date() -> None:
    assert stale() == [], "schemas/ is out of date: run `make schemas`"


def test_stale_notices_a_changed_file(tmp_path: Path) -> None:
    write(tmp_path)
    assert stale(tmp_path) == []
    (tmp_path / "outcome.schema.json").write_text("{}")
    assert stale(tmp_path) == ["outcome.schema.json"]


def test_schemas_describe_the_contract() -> None:
    schemas = generate()
    outcome = schemas["outcome.schema.json"]
    assert set(outcome["required"]) >= {"status", "source", "processed_at"}
    assert outcome["properties"]["status"]["enum"] == [
        "updated",
        "created",
        "partial",
        "stale",
        "unchanged",
        "not_found",
        "ignored",
        "rejected",
        "failed",
    ]
    envelope = schemas["input-envelope.schema.json"]
    assert set(envelope["discriminator"]["mapping"]) == {
        "event.created",
        "event.updated",
        "event.deleted",
        "user.created",
        "user.updated",
        "user.deleted",
    }
    assert "targets" in schemas["mapping.schema.json"]["properties"]
    assert (SCHEMA_DIR / "mapping.schema.json").is_file()
    assert (SAMPLES / "event.created.json").is_file()
    assert orjson.loads((SCHEMA_DIR / "dead-letter.schema.json").read_bytes())["required"]
