"""RecentChoices: per person and choice, the newest stamp of finished batches, within a
window and a bound (plain values and an injected clock)."""

from __future__ import annotations

import orjson
import pytest

from consumer.engine.recent import RecentChoices
from consumer.model.changes import (
    DELETION_OFFSET,
    DELETION_PARTITION,
    ChoiceKey,
    FieldValues,
    PersonResult,
    PersonWrite,
    Stamp,
    Step,
)
from consumer.model.held import HeldChoices
from tests.unit.helpers import T0, example_mapping

KEYS = {t.sobject: t.choice_keys() for t in example_mapping().targets}
NEWSLETTER, ANALYTICS = ("purposes", "newsletter"), ("purposes", "analytics")
TEXT = ("preferences", "topics", "offers", "product_news")
OFFERS = ("preference_values", "topics", "offers")
NEWS = ("preference_values", "topics", "product_news")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def person(key: str, **stamps: Stamp) -> PersonWrite:
    """``key``'s write holding ``stamps`` by Contact field."""
    return PersonWrite(key, key, fields={"Contact": {}}, stamps={"Contact": dict(stamps)})


def seeded(recent: RecentChoices, *keys: str) -> HeldChoices:
    """What ``recent`` seeds for a batch granting the newsletter to ``keys``."""
    held = HeldChoices(["Contact"])
    grant = {"Newsletter_Consent__c": True}
    recent.seed(held, [PersonWrite(k, k, {"Contact": dict(grant)}) for k in keys])
    return held


def make(clock: Clock, seconds: float = 60, people: int = 10) -> RecentChoices:
    return RecentChoices(KEYS, seconds=seconds, people=people, clock=clock)


def test_the_newest_stamp_per_choice_is_kept_across_targets_and_batches() -> None:
    recent = make(Clock())
    old, new, newer = Stamp(1, 0, 5, "a"), Stamp(2, 0, 1, "b"), Stamp(2, 1, 0, "c")
    # Each preference value is a choice of its own (a user.updated stamps only those that
    # changed), and so is the text beside them.
    recent.record(
        [person("p", Newsletter_Consent__c=new, Topic_Offers__c=old, Newsletter_Topics__c=new)]
    )
    lead = PersonWrite("p", "p", {"Lead": {}}, {"Lead": {"Newsletter_Consent__c": old}})
    recent.record([lead, person("q", Analytics_Consent__c=newer)])
    held = seeded(recent, "p", "q", "nobody")
    # Packed without the event id: only the order counts.
    assert held.of("p") == {NEWSLETTER: new, TEXT: new, OFFERS: old}
    assert held.of("q") == {ANALYTICS: newer}
    assert held.of("nobody") == {}
    recent.record([person("p", Newsletter_Consent__c=newer)])
    assert seeded(recent, "p").of("p")[NEWSLETTER] == newer


def test_a_deletions_stamp_survives_packing() -> None:
    recent = make(Clock())
    deletion = Stamp(7, DELETION_PARTITION, DELETION_OFFSET, "E")
    step = Step(T0, 0, {"Contact": {"Newsletter_Consent__c": False}}, deletion)
    write = person("p", Newsletter_Consent__c=deletion)
    write.steps, write.deleted_events = [step], [step]
    recent.record([write])
    held = seeded(recent, "p")
    assert held.of("p") == {NEWSLETTER: deletion}
    assert held.deleted_of("p") == {"E": deletion}
    # Kept when the person is taken in again without it.
    recent.record([person("p", Analytics_Consent__c=Stamp(9, 0, 0))])
    assert seeded(recent, "p").deleted_of("p") == {"E": deletion}


def test_people_are_forgotten_after_the_window_counted_from_their_last_batch() -> None:
    clock = Clock()
    recent = make(clock, seconds=60)
    recent.record([person("p", Newsletter_Consent__c=Stamp(1, 0, 0))])
    clock.now += 40
    recent.record([person("q", Newsletter_Consent__c=Stamp(1, 0, 0))])
    clock.now += 30  # p was taken in 70 s ago, q 30 s ago
    assert seeded(recent, "p").of("p") == {}  # not seeded, though not dropped yet
    assert seeded(recent, "q").of("q") != {}
    early = recent.record([person("r", Newsletter_Consent__c=Stamp(1, 0, 0))])
    assert len(recent) == 2 and early == 0  # p dropped when something was recorded
    recent.record([person("q", Analytics_Consent__c=Stamp(2, 0, 0))])
    clock.now += 59  # q's window starts over at its last batch
    assert set(seeded(recent, "q").of("q")) == {NEWSLETTER, ANALYTICS}


def test_beyond_the_bound_the_least_recently_taken_in_go_first() -> None:
    clock = Clock()
    recent = make(clock, people=2)
    for key in ("a", "b"):
        recent.record([person(key, Newsletter_Consent__c=Stamp(1, 0, 0))])
        clock.now += 1
    recent.record([person("a", Analytics_Consent__c=Stamp(2, 0, 0))])  # a is now the newest
    early = recent.record([person("c", Newsletter_Consent__c=Stamp(1, 0, 0))])
    assert len(recent) == 2 and early == 1  # b was still within its window
    held = seeded(recent, "a", "b", "c")
    assert held.of("b") == {} and held.of("a") and held.of("c")


@pytest.mark.parametrize(("seconds", "people"), [(0, 10), (60, 0)])
def test_nothing_is_kept_when_turned_off(seconds: float, people: int) -> None:
    recent = make(Clock(), seconds=seconds, people=people)
    assert not recent.enabled
    recent.record([person("p", Newsletter_Consent__c=Stamp(1, 0, 0))])
    assert len(recent) == 0 and seeded(recent, "p").of("p") == {}


def test_a_batch_granting_nothing_is_not_seeded() -> None:
    # Only grants are gated (and only grants of deleted events revoked).
    recent = make(Clock())
    recent.record([person("p", Newsletter_Consent__c=Stamp(1, 0, 0))])
    for values in ({"Newsletter_Consent__c": False}, {"Newsletter_Topics__c": ""}, {}):
        held = HeldChoices(["Contact"])
        recent.seed(held, [PersonWrite("p", "p", {"Contact": dict(values)})])
        assert held.of("p") == {}, values
    held = HeldChoices(["Contact"])
    recent.seed(held, [PersonWrite("p", "p", {"Contact": {"Newsletter_Topics__c": "offers"}})])
    assert held.of("p") != {}


def test_people_without_a_mapped_choice_are_not_kept() -> None:
    recent = make(Clock())
    recent.record([PersonWrite("p", "p"), person("q", Unmapped__c=Stamp(1, 0, 0))])
    assert len(recent) == 0


def test_grants_a_writer_revoked_are_no_choice() -> None:
    # A late version (index 1) of a deleted event granted the newsletter and analytics at
    # minute 3: revoked, as if it had never come (the writer revokes such a version whole).
    # What is kept is the batch's other choices.
    recent = make(Clock())
    first = Step(T0, 0, {"Contact": {"Analytics_Consent__c": False}}, Stamp(1, 0, 0, "w"))
    late = Stamp(3, 0, 1, "E")
    grant: FieldValues = {"Newsletter_Consent__c": True, "Analytics_Consent__c": True}
    revoked = Step(T0, 1, {"Contact": grant}, late)
    write = person("p", Newsletter_Consent__c=late, Analytics_Consent__c=late)
    write.steps = [first, revoked]
    result = PersonResult("stale", revoked={1: ["Analytics_Consent__c", "Newsletter_Consent__c"]})
    recent.record([write], {"Contact": {"p": result}})
    held = seeded(recent, "p")
    assert held.of("p") == {ANALYTICS: Stamp(1, 0, 0)}


def test_what_is_kept_reads_back_from_the_choices_topic() -> None:
    # Exported per person (the topic's value), restored by another process: the same
    # stamps, deletions included, and taken in when the record was written.
    clock = Clock()
    recent = make(clock, seconds=60)
    deletion = Stamp(7, DELETION_PARTITION, DELETION_OFFSET, "E")
    step = Step(T0, 0, {"Contact": {"Newsletter_Consent__c": False}}, deletion)
    write = person("p", Newsletter_Consent__c=deletion, Topic_Offers__c=Stamp(3, 1, 2))
    write.steps, write.deleted_events = [step], [step]
    recent.record([write])
    value = recent.export("p")
    assert value is not None and recent.export("nobody") is None
    other = make(clock, seconds=60)
    now_ms = 5_000_000
    bad = other.restore(
        [
            (b"p", value, now_ms - 10_000),  # written 10 s ago
            (b"q", value, now_ms - 61_000),  # before the window: skipped
            (b"r", b"not json", now_ms),
            (b"s", b'{"v":1,"c":[[["purposes","newsletter"],1,-1,0]]}', now_ms),
            (None, value, now_ms),
        ],
        now_ms,
    )
    other.restored()
    assert bad == 3 and len(other) == 1
    held = seeded(other, "p")
    assert held.of("p") == {NEWSLETTER: deletion, OFFERS: Stamp(3, 1, 2)}
    assert held.deleted_of("p") == {"E": deletion}
    clock.now += 49
    assert seeded(other, "p").of("p") != {}
    clock.now += 2  # 61 s since it was written
    assert seeded(other, "p").of("p") == {}


def test_a_restored_entry_merges_with_what_is_kept_and_forgets_in_taken_in_order() -> None:
    clock = Clock()
    recent = make(clock, seconds=60, people=2)
    recent.record([person("a", Newsletter_Consent__c=Stamp(5, 0, 0))])
    source = make(clock)
    source.record([person("a", Newsletter_Consent__c=Stamp(4, 0, 0))])
    source.record([person("b", Analytics_Consent__c=Stamp(4, 0, 0))])
    now_ms = 1_000_000
    entries = [(k.encode(), source.export(k), now_ms - 30_000) for k in ("a", "b")]
    assert recent.restore(entries, now_ms) == 0
    recent.restored()
    # The newer stamp stays; b, taken in 30 s ago, is now the first to go.
    assert seeded(recent, "a").of("a") == {NEWSLETTER: Stamp(5, 0, 0)}
    recent.record([person("c", Newsletter_Consent__c=Stamp(1, 0, 0))])
    assert seeded(recent, "a", "b", "c").of("b") == {} and len(recent) == 2


def test_choices_another_mapping_wrote_are_kept_and_written_back() -> None:
    # A replica on an older mapping kept the text alone (it gated every value there): read
    # back here, it is kept (it still gates fields here) and goes back out with the entry.
    clock = Clock()
    recent = make(clock)
    older = {"v": 1, "c": [[["preferences", "topics"], 4, 0, 1], [["purposes", "x"], 2, 0, 0]]}
    assert recent.restore([(b"p", orjson.dumps(older), 1_000)], 1_000) == 0
    recent.restored()
    assert seeded(recent, "p").of("p") == {
        ("preferences", "topics"): Stamp(4, 0, 1),
        ("purposes", "x"): Stamp(2, 0, 0),
    }
    value = recent.export("p")
    assert value is not None
    assert {tuple(c[0]) for c in orjson.loads(value)["c"]} == {
        ("preferences", "topics"),
        ("purposes", "x"),
    }


def test_a_revoked_event_grants_nothing_on_any_target_however_keyed() -> None:
    # The Contact revoked a late version (index 1) of a deleted event: its offers grant. The
    # Lead keeps the selection as text alone (another key, no sync state to revoke with): the
    # event's grant there is no choice either; its withdrawal on the Contact stays.
    keys: dict[str, dict[str, ChoiceKey]] = {
        "Contact": {"Topic_Offers__c": OFFERS, "Topic_Product_News__c": NEWS},
        "Lead": {"Newsletter_Topics__c": ("preferences", "topics")},
    }
    recent = RecentChoices(keys, seconds=60, people=10, clock=Clock())
    late = Stamp(3, 0, 1, "E")
    contact: FieldValues = {"Topic_Offers__c": True, "Topic_Product_News__c": False}
    lead: FieldValues = {"Newsletter_Topics__c": "offers"}
    step = Step(T0, 1, {"Contact": contact, "Lead": lead}, late)
    write = PersonWrite(
        "p",
        "p",
        {"Contact": dict(contact), "Lead": dict(lead)},
        {"Contact": dict.fromkeys(contact, late), "Lead": dict.fromkeys(lead, late)},
        [1],
        [step],
    )
    revoked = PersonResult("stale", revoked={1: ["Topic_Offers__c"]})
    recent.record([write], {"Contact": {"p": revoked}, "Lead": {"p": PersonResult("updated")}})
    assert seeded(recent, "p").of("p") == {NEWS: Stamp(3, 0, 1)}
