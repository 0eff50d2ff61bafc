"""Map stage rules: purpose -> Boolean, preference -> string, preference value -> Boolean."""

from __future__ import annotations

from consumer.stages.map import map_change, map_purposes, selected_values
from tests.unit.helpers import change, example_plans, purpose


def contact_plan(multipicklist: bool = False):  # type: ignore[no-untyped-def]
    return example_plans(multipicklist)[0]


def test_purpose_enabled_maps_to_boolean() -> None:
    values = map_purposes(
        [purpose("newsletter", True), purpose("analytics", False)], contact_plan()
    )
    assert values == {"Newsletter_Consent__c": True, "Analytics_Consent__c": False}


def test_null_purpose_writes_nothing_but_its_preferences_still_map() -> None:
    values = map_purposes([purpose("newsletter", None, topics="offers")], contact_plan())
    assert "Newsletter_Consent__c" not in values
    assert values["Newsletter_Topics__c"] == "offers"
    assert values["Topic_Offers__c"] is True
    assert values["Topic_Product_News__c"] is False


def test_preference_text_keeps_comma_list_and_multipicklist_joins_with_semicolon() -> None:
    p = purpose("newsletter", True, topics="product_news, offers", frequency="weekly")
    text = map_purposes([p], contact_plan())
    multi = map_purposes([p], contact_plan(multipicklist=True))
    assert text["Newsletter_Topics__c"] == "product_news,offers"
    assert multi["Newsletter_Topics__c"] == "product_news;offers"
    assert text["Newsletter_Frequency__c"] == "weekly"


def test_preference_values_true_when_selected_false_when_present_but_not() -> None:
    values = map_purposes([purpose("newsletter", True, topics="product_news")], contact_plan())
    assert values["Topic_Product_News__c"] is True
    assert values["Topic_Offers__c"] is False


def test_empty_selection_clears_string_and_sets_values_false() -> None:
    values = map_purposes([purpose("newsletter", True, topics="")], contact_plan())
    assert values["Newsletter_Topics__c"] is None
    assert values["Topic_Product_News__c"] is False
    assert values["Topic_Offers__c"] is False


def test_absent_preference_writes_nothing() -> None:
    values = map_purposes([purpose("newsletter", True)], contact_plan())
    assert values == {"Newsletter_Consent__c": True}


def test_unmapped_purposes_and_preferences_are_skipped() -> None:
    values = map_purposes([purpose("cookies", True, colour="red")], contact_plan())
    assert values == {}


def test_lead_target_maps_only_its_own_fields() -> None:
    lead = example_plans()[1]
    values = map_purposes([purpose("newsletter", False), purpose("analytics", True)], lead)
    assert values == {"Newsletter_Consent__c": False}


def test_selected_values_splits_trims_and_dedups() -> None:
    assert selected_values(" a, b ,,a, c") == ["a", "b", "c"]
    assert selected_values("") == []


def test_user_updated_writes_only_what_changed_between_old_and_new() -> None:
    from dataclasses import replace

    from consumer.stages.map import map_change
    from tests.unit.helpers import change, example_plans

    new = change(
        "jane@x.com",
        purpose("newsletter", True, topics="offers", frequency="monthly"),
        purpose("analytics", True),
        full=True,
    )
    old = (
        purpose("newsletter", True, topics="product_news,offers", frequency="weekly"),
        purpose("analytics", True),
    )
    fields = map_change(replace(new, previous_purposes=old), example_plans())
    # newsletter and analytics did not change: not re-asserted; the preferences did.
    assert fields == {
        "Contact": {
            "Newsletter_Topics__c": "offers",
            "Newsletter_Frequency__c": "monthly",
            "Topic_Product_News__c": False,
        }
    }
    # Without an old state (user.created, or an unreadable old_entity) the whole state applies.
    whole = map_change(new, example_plans())
    assert whole["Contact"]["Newsletter_Consent__c"] is True
    assert whole["Lead"] == {"Newsletter_Consent__c": True}


def test_a_withdraw_all_change_takes_every_mapped_field_of_every_target_to_no_consent() -> None:
    gone = change("p@example.com", full=True)
    gone.withdraw_all = True
    assert map_change(gone, example_plans()) == {
        "Contact": {
            "Newsletter_Consent__c": False,
            "Analytics_Consent__c": False,
            "Newsletter_Topics__c": None,
            "Newsletter_Frequency__c": None,
            "Topic_Product_News__c": False,
            "Topic_Offers__c": False,
        },
        "Lead": {"Newsletter_Consent__c": False},
    }


def test_an_event_update_withdraws_what_its_earlier_version_granted_and_it_drops() -> None:
    from dataclasses import replace

    new = change("jane@x.com", purpose("newsletter", True))
    new.event_type = "event.updated"
    old = (purpose("newsletter", True, topics="offers"), purpose("analytics", True))
    fields = map_change(replace(new, previous_purposes=old), example_plans())
    # The newsletter did not change; analytics and the topics are no longer chosen.
    assert fields["Contact"] == {
        "Analytics_Consent__c": False,
        "Newsletter_Topics__c": None,
        "Topic_Offers__c": False,
    }
    # A user aggregate's absent purpose is no choice, not a withdrawal.
    user = replace(new, event_type="user.updated", full_state=True, previous_purposes=old)
    assert map_change(user, example_plans()) == {}
