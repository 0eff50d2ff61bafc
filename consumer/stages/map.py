"""Map stage: one person's Didomi choices onto one target's Salesforce field values.

Pure. Rules (Didomi's Salesforce integration):
- purpose ``enabled`` true/false -> Boolean field; ``null`` writes nothing;
- preference -> string field: the selected value ids, ``;``-joined for a multipicklist,
  Didomi's comma list for text; nothing selected writes null (clears the field);
- preference value -> Boolean field: true when selected, false when the preference is present
  and the value is not; a preference absent from the event writes nothing;
- ``user.updated``: only the fields whose values changed between ``old_entity`` and
  ``new_entity``.
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.mapping import TargetPlan
from consumer.model.changes import ConsentChange, FieldValues
from consumer.model.events import Purpose


def selected_values(raw: str) -> list[str]:
    """Split Didomi's comma-separated selection into value ids, in order, without blanks."""
    seen: list[str] = []
    for part in raw.split(","):
        value = part.strip()
        if value and value not in seen:
            seen.append(value)
    return seen


def map_change(change: ConsentChange, plans: Iterable[TargetPlan]) -> dict[str, FieldValues]:
    """What one change writes to each target (targets with nothing to write are left out).

    A ``user.updated`` with a readable ``old_entity`` writes only the fields whose values
    differ between the old and the new state: a user aggregate re-asserting an old choice
    must not overwrite a later choice made under another Didomi user of the same person.
    """
    out: dict[str, FieldValues] = {}
    for plan in plans:
        values = map_purposes(change.purposes, plan)
        if change.previous_purposes is not None and values:
            before = map_purposes(change.previous_purposes, plan)
            values = {f: v for f, v in values.items() if f not in before or before[f] != v}
        if values:
            out[plan.sobject] = values
    return out


def map_purposes(purposes: Iterable[Purpose], plan: TargetPlan) -> FieldValues:
    """Field values for one target from one event's purposes (only what the event mentions)."""
    mapping = plan.mapping
    out: FieldValues = {}
    for purpose in purposes:
        purpose_field = mapping.purposes.get(purpose["id"])
        enabled = purpose.get("enabled")
        if purpose_field is not None and enabled is not None:
            out[purpose_field] = enabled
        for pref_id, selection in (purpose.get("values") or {}).items():
            chosen = selected_values(selection.get("value", ""))
            pref_field = mapping.preferences.get(pref_id)
            if pref_field is not None:
                sep = plan.preference_separators.get(pref_id, ",")
                out[pref_field] = sep.join(chosen) if chosen else None
            for value_id, value_field in mapping.preference_values.get(pref_id, {}).items():
                out[value_field] = value_id in chosen
    return out
