"""JSON Schemas of the service's contracts, generated from the pydantic models.

``python -m consumer.devkit.schemas write`` regenerates ``schemas/``; ``check`` exits non-zero when
the files are out of date (a test runs the same comparison).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from consumer.mapping import MappingConfig
from consumer.model.events import Envelope
from consumer.model.outcomes import DeadLetter, Outcome

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _with_header(schema: dict[str, Any], schema_id: str, title: str, note: str) -> dict[str, Any]:
    out: dict[str, Any] = {"$schema": _DRAFT, "$id": schema_id, "title": title}
    if note:
        out["$comment"] = note
    out.update({k: v for k, v in schema.items() if k != "title"})
    return out


def generate() -> dict[str, dict[str, Any]]:
    """File name -> schema document."""
    envelope = TypeAdapter(Envelope).json_schema()
    return {
        "input-envelope.schema.json": _with_header(
            envelope,
            "input-envelope.schema.json",
            "Didomi webhook payload (input topic)",
            "One message value on KAFKA_INPUT_TOPIC. Unknown keys are allowed and ignored.",
        ),
        "outcome.schema.json": _with_header(
            Outcome.model_json_schema(),
            "outcome.schema.json",
            "Outcome record (results topic)",
            "One per input message on KAFKA_RESULTS_TOPIC, keyed by organization_user_id. "
            "Fields whose value is null are omitted.",
        ),
        "dead-letter.schema.json": _with_header(
            DeadLetter.model_json_schema(),
            "dead-letter.schema.json",
            "Dead letter metadata (DLQ topic headers)",
            "A dead letter's key, value and headers are the input message's; these fields are "
            "added as x-dlq-* headers (x-dlq-error-class, x-dlq-reason, x-dlq-source-topic, "
            "x-dlq-source-partition, x-dlq-source-offset, x-dlq-first-seen, x-dlq-origin, "
            "x-dlq-event-id).",
        ),
        "mapping.schema.json": _with_header(
            MappingConfig.model_json_schema(),
            "mapping.schema.json",
            "Mapping file (SYNC_MAPPING_FILE, YAML)",
            "",
        ),
    }


def render(schema: dict[str, Any]) -> bytes:
    """Stable text for a schema file."""
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Schema files that are missing or differ from what the models generate."""
    return [
        name
        for name, schema in generate().items()
        if not (directory / name).is_file() or (directory / name).read_bytes() != render(schema)
    ]


def write(directory: Path = SCHEMA_DIR) -> None:
    """Regenerate every schema file."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in generate().items():
        (directory / name).write_bytes(render(schema))


def main(argv: list[str]) -> int:
    """``write`` or ``check``."""
    if argv[:1] == ["write"]:
        write()
        return 0
    if argv[:1] == ["check"]:
        bad = stale()
        if bad:
            print(f"out of date: {', '.join(bad)}; run `make schemas`", file=sys.stderr)
            return 1
        return 0
    print("usage: python -m consumer.devkit.schemas write|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
