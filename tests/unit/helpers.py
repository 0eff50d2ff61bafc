"""Small builders shared by unit tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from consumer.mapping import MappingConfig, TargetPlan, load_mapping, plan_target
from consumer.model.changes import ConsentChange
from consumer.model.events import Purpose
from consumer.model.messages import email_key

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "samples"
T0 = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def example_mapping() -> MappingConfig:
    return load_mapping(SAMPLES.parent / "mapping.example.yaml")


def example_plans(multipicklist: bool = False) -> list[TargetPlan]:
    mapping = example_mapping()
    plans = []
    for target in mapping.targets:
        plan = plan_target(target, None)
        if multipicklist:
            plan = TargetPlan(target, dict.fromkeys(plan.preference_separators, ";"))
        plans.append(plan)
    return plans


def purpose(pid: str, enabled: bool | None = None, **values: str) -> Purpose:
    raw: dict[str, Any] = {"id": pid, "enabled": enabled}
    if values:
        raw["values"] = {k: {"value": v} for k, v in values.items()}
    validated: Purpose = TypeAdapter(Purpose).validate_python(raw)
    return validated


def change(
    email: str, *purposes: Purpose, minutes: int = 0, event_id: str = "e", full: bool = False
) -> ConsentChange:
    return ConsentChange(
        event_id=event_id,
        event_type="user.updated" if full else "event.created",
        organization_user_id=email,
        email_key=email_key(email),
        event_time=T0 + timedelta(minutes=minutes),
        regulation=None if full else "gdpr",
        purposes=tuple(purposes),
        full_state=full,
    )
