"""The sync state format and the value checks against describe."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from consumer.mapping import FieldInfo
from consumer.model import sync_state
from consumer.model.changes import Stamp
from consumer.salesforce.fields import refusal

names = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,38}__c", fullmatch=True)
stamps = st.builds(
    Stamp,
    st.integers(0, 2**43),
    st.integers(0, 10_000),
    st.integers(0, 2**62),
    st.text(max_size=100),
)


@given(st.dictionaries(names, stamps, max_size=20))
def test_state_round_trips_within_its_documented_capacity(state: dict[str, Stamp]) -> None:
    text = sync_state.encode(state)
    decoded = sync_state.decode(text)
    assert decoded == state  # stamps compare by time, partition and offset
    for name, stamp in decoded.items():
        kept = state[name].event_id[: sync_state.MAX_EVENT_ID]
        assert len(stamp.event_id) == len(kept)
        assert all(a == b or a == "?" for a, b in zip(stamp.event_id, kept, strict=True))
    assert len(text) <= sync_state.capacity(state)


def test_an_event_id_json_would_escape_does_not_outgrow_the_capacity() -> None:
    # Hypothesis found it: "\x1f" is written as "\u001f", six characters for one.
    odd = "0" * 39 + "\x1f" * 4 + "\x07" * 3 + '"\\'
    state = {"A__c": Stamp(1_000_000, 10, 10**18, odd)}
    text = sync_state.encode(state)
    assert len(text) <= sync_state.capacity(state)
    assert sync_state.decode(text)["A__c"].event_id == "0" * 39 + "?" * 9
    # A plain id is kept as it is.
    plain = {"A__c": Stamp(1, 0, 0, "0f2a5b0e-7d1c-4b8e-9a55-2c1d3e4f5a6b")}
    assert sync_state.decode(sync_state.encode(plain))["A__c"].event_id == plain["A__c"].event_id


def test_the_format_is_compact_and_documented() -> None:
    text = sync_state.encode({"Newsletter_Consent__c": Stamp(1763629200000, 0, 42, "ev-1")})
    assert text == '{"v":1,"f":{"Newsletter_Consent__c":[1763629200000,0,42,"ev-1"]}}'


def test_an_unreadable_state_counts_as_empty() -> None:
    for text in (None, "", "not json", "[]", '{"v":2,"f":{}}', '{"v":1,"f":[]}'):
        assert sync_state.decode(text) == {}
    # A broken entry is dropped; the others are kept.
    mixed = '{"v":1,"f":{"A":[1,0,0,"x"],"B":[true,0,0,"y"],"C":"z"}}'
    assert sync_state.decode(mixed) == {"A": Stamp(1, 0, 0)}


def test_stamps_order_by_time_then_position_not_by_event_id() -> None:
    assert Stamp(1, 0, 5, "z") < Stamp(2, 0, 0, "a")
    assert Stamp(1, 0, 5) < Stamp(1, 1, 0)
    assert Stamp(1, 0, 5, "a") == Stamp(1, 0, 5, "b")


TEXT = FieldInfo("Frequency__c", "string", length=10)
PICK = FieldInfo("Tier__c", "picklist", length=40, picklist_values=("gold",), restricted=True)
OPEN = FieldInfo("Tier__c", "picklist", length=40, picklist_values=("gold",), restricted=False)
MULTI = FieldInfo(
    "Topics__c", "multipicklist", length=4099, picklist_values=("a", "b"), restricted=True
)


def test_values_salesforce_would_refuse_are_named_with_its_codes() -> None:
    assert refusal(TEXT, "x" * 10) is None
    too_long = refusal(TEXT, "x" * 11)
    assert too_long is not None and too_long.code == "STRING_TOO_LONG"
    assert too_long.fields == ["Frequency__c"]
    bad = refusal(PICK, "silver")
    assert bad is not None and bad.code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert refusal(OPEN, "silver") is None  # unrestricted picklists take any value
    assert refusal(MULTI, "a;b") is None
    bad_multi = refusal(MULTI, "a;c")
    assert bad_multi is not None and bad_multi.code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    many = FieldInfo("M__c", "multipicklist", length=100_000)
    too_many = refusal(many, ";".join(f"v{i}" for i in range(101)))
    assert too_many is not None and too_many.code == "TOO_MANY_ENUM_VALUE"
    # Booleans and clearing a field are never refused; an unknown field is Salesforce's call.
    assert refusal(TEXT, None) is None
    assert refusal(FieldInfo("B__c", "boolean"), False) is None
    assert refusal(None, "x" * 1000) is None
