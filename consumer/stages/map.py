"""Map stage: one person's Didomi choices onto one target's Salesforce field values.

Pure. Rules (Didomi's Salesforce integration):
- purpose ``enabled`` true/false -> Boolean field; ``null`` writes nothing;
- preference -> string field: the selected value ids, ``;``-joined for a multipicklist,
  Didomi's comma list for text; nothing selected writes null (clears the field);
- preference value -> Boolean field: true when selected, false when the preference is present
  and the value is not; a preference absent from the event writes nothing;
- ``user.updated`` and ``event.updated``: only the fields whose values changed between
  ``old_entity`` and ``new_entity`` (when the old one was applied and can be read); what an
  event's earlier version granted and its new one no longer mentions is withdrawn;
- a deleted user with ``on_user_deleted: withdraw``: every mapped field to "no consent"
  (purposes and preference values false, preferences null).
"""

from __future__ import annotations

from collections.abc import Iterable

from consumer.mapping import TargetPlan
from consumer.model.changes import ConsentChange, FieldValues, grants
from consumer.model.events import Purpose


def selected_values(raw: str) -> list[str]:
    """Split Didomi's comma-separated selection into value ids, in order, without blanks."""
    seen: list[str] = []
    for part in raw.split(","):
        value = part.strip()
        if value and value not in seen:
            seen.append(value)
    return seen


#: One purpose as the mapper reads it: id, ``enabled`` (None: no choice) and, per preference
#: present, its selected value ids.
Choice = tuple[str, bool | None, tuple[tuple[str, list[str]], ...]]


def choices(purposes: Iterable[Purpose]) -> list[Choice]:
    """The purposes read once (selections split), for mapping onto any number of targets."""
    return [
        (
            purpose["id"],
            purpose.get("enabled"),
            tuple(
                (pref_id, selected_values(selection.get("value", "")))
                for pref_id, selection in (purpose.get("values") or {}).items()
            ),
        )
        for purpose in purposes
    ]


def map_change(change: ConsentChange, plans: Iterable[TargetPlan]) -> dict[str, FieldValues]:
    """What one change writes to each target (targets with nothing to write are left out).

    A ``user.updated`` or ``event.updated`` with a readable ``old_entity`` writes only the
    fields whose values differ between the old and the new version: a user aggregate
    re-asserting an old choice must not overwrite a later choice made under another Didomi
    user of the same person, nor an event's update (a proof attached) one made since.
    """
    out: dict[str, FieldValues] = {}
    if change.withdraw_all:
        for plan in plans:
            out[plan.sobject] = plan.mapping.withdrawn()
        return out
    now = choices(change.purposes)
    before_choices = (
        choices(change.previous_purposes) if change.previous_purposes is not None else None
    )
    deleted = change.event_type == "event.deleted"
    # An event's earlier version granted what this one no longer mentions: withdrawn (at
    # this version's place), as Didomi no longer counts it; a grant of an older event that
    # the version had replaced is not restored (a false too many, never a true).
    dropping = before_choices is not None and change.event_type == "event.updated"
    for plan in plans:
        values = map_choices(now, plan)
        if before_choices is not None and (values or dropping):
            before = map_choices(before_choices, plan)
            changed = {f: v for f, v in values.items() if f not in before or before[f] != v}
            if dropping:
                dropped = [f for f, v in before.items() if f not in values and grants(v)]
                if dropped:
                    withdrawn = plan.mapping.withdrawn()
                    changed.update((f, withdrawn[f]) for f in dropped)
            values = changed
        if values or (deleted and plan.mapping.sync_state_field):
            # A deleted event reaches every target keeping a sync state, mapped or not:
            # records there may hold what an earlier version of it granted.
            out[plan.sobject] = values
    return out


def map_purposes(purposes: Iterable[Purpose], plan: TargetPlan) -> FieldValues:
    """Field values for one target from one event's purposes (only what the event mentions)."""
    return map_choices(choices(purposes), plan)


def map_choices(read: Iterable[Choice], plan: TargetPlan) -> FieldValues:
    """Field values for one target from purposes already read by :func:`choices`."""
    mapping = plan.mapping
    purposes, preferences, values = (
        mapping.purposes,
        mapping.preferences,
        mapping.preference_values,
    )
    out: FieldValues = {}
    for purpose_id, enabled, selections in read:
        if enabled is not None:
            purpose_field = purposes.get(purpose_id)
            if purpose_field is not None:
                out[purpose_field] = enabled
        for pref_id, chosen in selections:
            pref_field = preferences.get(pref_id)
            if pref_field is not None:
                sep = plan.preference_separators.get(pref_id, ",")
                out[pref_field] = sep.join(chosen) if chosen else None
            value_fields = values.get(pref_id)
            if value_fields:
                for value_id, value_field in value_fields.items():
                    out[value_field] = value_id in chosen
    return out
