"""Dedup stage: per-person merge in event-time order, later wins per field."""

from __future__ import annotations

from dataclasses import fields

from consumer.model.changes import ConsentChange, Sourced
from consumer.stages.map import map_change
from consumer.stages.merge import merge_by_person
from tests.unit.helpers import change, example_plans, purpose


def src(c: ConsentChange, partition: int = 0, offset: int = 0, index: int = 0) -> Sourced:
    return Sourced(c, partition, offset, index, map_change(c, example_plans()))


def test_later_event_wins_per_field_and_partial_events_keep_other_fields() -> None:
    first = change("jane@x.com", purpose("newsletter", True), purpose("analytics", True), minutes=1)
    second = change("jane@x.com", purpose("analytics", False), minutes=2)
    people = merge_by_person([src(second, offset=1, index=1), src(first, offset=0, index=0)])
    assert list(people) == ["jane@x.com"]
    person = people["jane@x.com"]
    assert person.fields["Contact"] == {
        "Newsletter_Consent__c": True,
        "Analytics_Consent__c": False,
    }
    assert person.fields["Lead"] == {"Newsletter_Consent__c": True}
    assert person.indexes == [0, 1]


def test_event_time_orders_even_when_offsets_disagree() -> None:
    newer = change("a@x.com", purpose("newsletter", False), minutes=5)
    older = change("a@x.com", purpose("newsletter", True), minutes=1)
    # The newer event was read first (lower offset): event time still decides.
    people = merge_by_person([src(newer, offset=0, index=0), src(older, offset=1, index=1)])
    assert people["a@x.com"].fields["Contact"]["Newsletter_Consent__c"] is False


def test_ties_in_event_time_are_broken_by_offset() -> None:
    a = change("a@x.com", purpose("newsletter", True), minutes=1)
    b = change("a@x.com", purpose("newsletter", False), minutes=1)
    people = merge_by_person([src(b, offset=8, index=1), src(a, offset=7, index=0)])
    assert people["a@x.com"].fields["Contact"]["Newsletter_Consent__c"] is False


def test_emails_differing_in_case_are_one_person_with_latest_spelling() -> None:
    a = change("Jane@X.com", purpose("newsletter", True), minutes=1)
    b = change("jane@x.COM ", purpose("analytics", True), minutes=2)
    people = merge_by_person([src(a, index=0), src(b, offset=1, index=1)])
    assert list(people) == ["jane@x.com"]
    assert people["jane@x.com"].email == "jane@x.COM"


def test_person_with_nothing_mapped_for_a_target_has_no_write_there() -> None:
    c = change("a@x.com", purpose("analytics", True))
    person = merge_by_person([src(c)])["a@x.com"]
    assert "Lead" not in person.fields
    assert person.fields["Contact"] == {"Analytics_Consent__c": True}


def test_many_people_stay_apart() -> None:
    items = [
        src(change(f"p{i}@x.com", purpose("newsletter", i % 2 == 0)), offset=i, index=i)
        for i in range(50)
    ]
    people = merge_by_person(items)
    assert len(people) == 50
    assert people["p3@x.com"].fields["Contact"]["Newsletter_Consent__c"] is False


def test_fields_after_keeps_only_newer_events_in_order() -> None:
    a = change("a@x.com", purpose("newsletter", True), purpose("analytics", True), minutes=1)
    b = change("a@x.com", purpose("newsletter", False), minutes=2)
    c = change("a@x.com", purpose("analytics", False), minutes=3)
    person = merge_by_person(
        [src(a, offset=0, index=0), src(b, offset=1, index=1), src(c, offset=2, index=2)]
    )["a@x.com"]
    everything, used = person.fields_after("Contact", None)
    assert everything == person.fields["Contact"]
    assert [s.index for s in used] == [0, 1, 2]
    newer, used = person.fields_after("Contact", b.event_time)
    assert newer == {"Analytics_Consent__c": False}
    assert [s.index for s in used] == [2]
    nothing, used = person.fields_after("Contact", c.event_time)
    assert nothing == {}
    assert used == []
    # Lead maps only the newsletter: event c does not concern it.
    lead, used = person.fields_after("Lead", a.event_time)
    assert lead == {"Newsletter_Consent__c": False}
    assert [s.index for s in used] == [1]


def test_a_mapped_change_keeps_everything_but_its_purposes() -> None:
    full = change("Jane@X.com", purpose("newsletter", True), full=True)
    slim = full.mapped()
    assert slim.purposes == () and slim.previous_purposes is None
    kept = [f for f in fields(ConsentChange) if f.name not in ("purposes", "previous_purposes")]
    assert kept and all(getattr(slim, f.name) == getattr(full, f.name) for f in kept)


def test_a_deletion_wins_a_tie_in_time_and_a_person_erased_last_holds_only_deletions() -> None:
    # A user deleted at the very millisecond of its last grant; the grant is delivered again
    # afterwards (a later offset). The withdrawal must win the tie, and its stamp must beat
    # the redelivered grant's in any later batch too.
    grant = change("a@x.com", purpose("newsletter", True), minutes=1, event_id="g")
    erased = change("a@x.com", minutes=1, event_id="u", full=True)
    erased.event_type, erased.withdraw_all = "user.deleted", True
    people = merge_by_person(
        [src(grant, offset=7, index=0), src(erased, offset=8, index=1), src(grant, 0, 9, 2)]
    )
    person = people["a@x.com"]
    assert person.fields["Contact"]["Newsletter_Consent__c"] is False
    stamp = person.stamps["Contact"]["Newsletter_Consent__c"]
    assert stamp.event_id == "u"
    assert (
        stamp
        > merge_by_person([src(grant, 5, 10**6, 0)])["a@x.com"].stamps["Contact"][
            "Newsletter_Consent__c"
        ]
    )
    assert not person.may_create("Contact") and not person.may_create("Lead")
    # A choice made after the deletion (a re-created user) may create again.
    later = change("a@x.com", purpose("analytics", True), minutes=2, event_id="l")
    again = merge_by_person([src(erased, offset=1, index=0), src(later, offset=2, index=1)])
    assert again["a@x.com"].may_create("Contact")
    assert not again["a@x.com"].may_create("Lead")  # Lead maps no analytics


def test_a_deleted_event_writing_nothing_does_not_stop_a_new_person_being_created() -> None:
    # A new person grants analytics; another event of theirs, which maps nothing, is
    # deleted later in the same batch. The grant still creates the person.
    grant = change("n@x.com", purpose("analytics", True), minutes=1, event_id="g")
    unmapped = change("n@x.com", purpose("unmapped", True), minutes=2, event_id="d")
    unmapped.event_type = "event.deleted"
    people = merge_by_person([src(grant, offset=1, index=0), src(unmapped, offset=2, index=1)])
    assert people["n@x.com"].may_create("Contact")


def test_a_deleted_event_is_kept_for_the_writer_and_reaches_every_stateful_target() -> None:
    # E's first version granted the newsletter and the "offers" topic; E's last version
    # only analytics, which the Lead does not map. The deletion's step is kept for the
    # writer (which withdraws what E granted, knowing what the records hold), and the Lead
    # is written for the person though the deletion maps nothing there.
    first = change("v@x.com", purpose("analytics", True), minutes=1, event_id="F")
    deleted = change("v@x.com", purpose("analytics", False), minutes=2, event_id="E")
    deleted.event_type = "event.deleted"
    people = merge_by_person([src(first, offset=1, index=0), src(deleted, 0, 3, 1)])
    person = people["v@x.com"]
    assert person.fields == {"Contact": {"Analytics_Consent__c": False}, "Lead": {}}
    assert [s.index for s in person.deleted_events] == [1]
    assert person.steps[-1].fields == {"Contact": {"Analytics_Consent__c": False}}
    # Another event type mapping nothing to the Lead leaves it out.
    assert "Lead" not in merge_by_person([src(first)])["v@x.com"].fields
