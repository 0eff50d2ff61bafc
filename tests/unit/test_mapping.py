"""Mapping file loading and validation against describe."""

from __future__ import annotations

import pytest

from consumer.errors import MappingError
from consumer.mapping import FieldInfo, parse_mapping, plan_target, validate_against_describe
from tests.unit.helpers import example_mapping


def describe(**types: str) -> dict[str, FieldInfo]:
    fields = {
        "Id": FieldInfo("Id", "id", createable=False, updateable=False, nillable=False),
        "Email": FieldInfo("Email", "email", 80),
        "LastName": FieldInfo("LastName", "string", 80, nillable=False),
        "IsDeleted": FieldInfo(
            "IsDeleted",
            "boolean",
            createable=False,
            updateable=False,
            nillable=False,
            defaulted_on_create=True,
        ),
    }
    for name, kind in types.items():
        fields[name] = FieldInfo(
            name, kind, 255, nillable=kind != "boolean", defaulted_on_create=kind == "boolean"
        )
    return {k.lower(): v for k, v in fields.items()}


STATE_FIELD = FieldInfo("Didomi_Sync_State__c", "textarea", 131_072, filterable=False)

GOOD_CONTACT = {
    "Newsletter_Consent__c": "boolean",
    "Analytics_Consent__c": "boolean",
    "Newsletter_Topics__c": "multipicklist",
    "Newsletter_Frequency__c": "picklist",
    "Topic_Product_News__c": "boolean",
    "Topic_Offers__c": "boolean",
}


def test_example_mapping_loads_with_two_targets() -> None:
    mapping = example_mapping()
    assert mapping.regulations == ["gdpr"]
    assert [t.sobject for t in mapping.targets] == ["Contact", "Lead"]
    contact = mapping.targets[0]
    assert contact.upsert_mode
    assert contact.create_defaults == {"LastName": "Unknown"}
    assert contact.preference_values["topics"]["offers"] == "Topic_Offers__c"
    assert mapping.targets[1].upsert_mode is False


def test_example_mapping_fits_a_matching_describe() -> None:
    contact = example_mapping().targets[0]
    fields = describe(**GOOD_CONTACT)
    fields["newsletter_topics__c"] = FieldInfo(
        "Newsletter_Topics__c", "multipicklist", picklist_values=("product_news", "offers")
    )
    fields["didomi_sync_state__c"] = STATE_FIELD
    assert validate_against_describe(contact, fields) == []
    plan = plan_target(contact, fields)
    assert plan.preference_separators == {"topics": ";", "frequency": ","}


def test_describe_problems_are_each_reported() -> None:
    contact = example_mapping().targets[0]
    types = dict(GOOD_CONTACT)
    types["Analytics_Consent__c"] = "string"  # purpose must be boolean
    types["Newsletter_Frequency__c"] = "boolean"  # preference must be a string
    del types["Topic_Offers__c"]  # missing
    fields = describe(**types)
    fields["newsletter_topics__c"] = FieldInfo(
        "Newsletter_Topics__c", "multipicklist", picklist_values=("product_news",)
    )
    fields["newsletter_consent__c"] = FieldInfo(
        "Newsletter_Consent__c",
        "boolean",
        updateable=False,
        defaulted_on_create=True,
        nillable=False,
    )
    fields["company__c"] = FieldInfo("Company__c", "string", nillable=False)
    text = "\n".join(str(p) for p in validate_against_describe(contact, fields))
    assert "purposes.analytics: field Analytics_Consent__c is string, expected boolean" in text
    assert "preferences.frequency: field Newsletter_Frequency__c is boolean" in text
    assert "preference_values.topics.offers: field Topic_Offers__c does not exist" in text
    assert "field Newsletter_Consent__c is not updateable" in text
    assert "value 'offers' is not a picklist value of Newsletter_Topics__c" in text
    assert "required field Company__c has no default" in text


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        ("targets: []", "targets"),
        ("targets: [{sobject: Contact}]", "maps no purpose"),
        ("targets: [{sobject: 'Con tact', purposes: {a: B__c}}]", "sobject"),
        ("targets: [{sobject: Contact, purposes: {a: X__c, b: X__c}}]", "mapped twice"),
        ("targets: [{sobject: Contact, purposes: {a: Email}}]", "match field"),
        ("targets: [{sobject: Contact, purposes: {a: A__c}, colour: red}]", "colour"),
        (
            "targets: [{sobject: Contact, purposes: {a: A__c}, sync_state_field: S__c}, "
            "{sobject: contact, purposes: {a: A__c}, sync_state_field: S__c}]",
            "once",
        ),
        # Without the sync state a late event overwrites a newer choice: said, or refused.
        ("targets: [{sobject: Contact, purposes: {a: A__c}}]", "sync_state_field is not set"),
        (
            "targets: [{sobject: Contact, purposes: {a: A__c}, sync_state_field: S__c, "
            "allow_late_overwrites: true}]",
            "allow_late_overwrites is for a target without sync_state_field",
        ),
        ("targets: [{sobject: Contact, purposes: {a: A__c}, upsert_mode: maybe}]", "upsert_mode"),
        # A default on a consent field would be a choice nobody made.
        (
            "targets: [{sobject: Contact, purposes: {a: A__c, b: B__c}, "
            "create_defaults: {LastName: X, b__c: true}}]",
            "create_defaults names b__c, which is mapped (purposes.b)",
        ),
        (
            "targets: [{sobject: Contact, purposes: {a: A__c}, sync_state_field: S__c, "
            "create_defaults: {S__c: x}}]",
            "the sync_state_field",
        ),
        (
            "targets: [{sobject: Contact, purposes: {a: A__c}, create_defaults: {Email: x}}]",
            "the match_field",
        ),
        ("targets: {", "not valid YAML"),
    ],
)
def test_bad_mapping_files_say_what_is_wrong(doc: str, fragment: str) -> None:
    with pytest.raises(MappingError, match=r"invalid|YAML") as info:
        parse_mapping(doc)
    assert fragment in str(info.value)


def _with_state(**changes: object) -> dict[str, FieldInfo]:
    fields = describe(**GOOD_CONTACT)
    fields["newsletter_topics__c"] = FieldInfo(
        "Newsletter_Topics__c", "multipicklist", picklist_values=("product_news", "offers")
    )
    base = {"name": "Didomi_Sync_State__c", "type": "textarea", "length": 131_072}
    base.update(changes)
    fields["didomi_sync_state__c"] = FieldInfo(**base)  # type: ignore[arg-type]
    return fields


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"type": "string", "length": 255}, "expected a Long Text Area"),
        ({"length": 255}, "holds 255 characters"),
        ({"updateable": False}, "is not writable"),
    ],
)
def test_the_sync_state_field_is_checked(changes: dict[str, object], fragment: str) -> None:
    contact = example_mapping().targets[0]
    problems = validate_against_describe(contact, _with_state(**changes))
    assert [p.where for p in problems] == ["sync_state_field"] * len(problems)
    assert any(fragment in p.message for p in problems), problems


def test_a_missing_sync_state_field_is_a_problem_and_none_is_a_warning() -> None:
    from consumer.mapping import warnings_for

    contact = example_mapping().targets[0]
    problems = validate_against_describe(contact, describe(**GOOD_CONTACT))
    assert any(p.where == "sync_state_field" and "does not exist" in p.message for p in problems)
    assert warnings_for(contact) == []
    bare = contact.model_copy(update={"sync_state_field": None, "allow_late_overwrites": True})
    (warning,) = warnings_for(bare)
    assert "late" in warning.message and "Long Text Area" in warning.message


def test_names_resolve_to_describes_spelling_and_ambiguous_ones_are_refused() -> None:
    from consumer.mapping import describe_fields

    miscased = (
        example_mapping()
        .targets[0]
        .model_copy(
            update={"match_field": "email", "purposes": {"newsletter": "NEWSLETTER_CONSENT__C"}}
        )
    )
    fields = _with_state()
    assert validate_against_describe(miscased, fields) == []
    plan = plan_target(miscased, fields)
    assert plan.mapping.match_field == "Email"
    assert plan.mapping.purposes == {"newsletter": "Newsletter_Consent__c"}
    raw = [
        {"name": "Email", "type": "email"},
        {"name": "Flag__c", "type": "boolean"},
        {"name": "flag__C", "type": "boolean"},
    ]
    described, ambiguous = describe_fields(raw)
    assert ambiguous == {"flag__c"}
    target = parse_mapping(
        "targets: [{sobject: Contact, match_field: Email, purposes: {p: FLAG__c}, "
        "allow_late_overwrites: true}]"
    ).targets[0]
    problems = validate_against_describe(target, described, ambiguous)
    assert any("ambiguous" in p.message for p in problems)


def test_a_create_default_that_cannot_be_set_on_create_is_a_problem() -> None:
    # Salesforce would refuse every create carrying it; found at start-up, not per record.
    contact = example_mapping().targets[0]
    fields = _with_state()
    fields["lastname"] = FieldInfo("LastName", "string", 80, nillable=False, createable=False)
    problems = validate_against_describe(contact, fields)
    assert [(p.where, p.message) for p in problems] == [
        ("create_defaults.LastName", "field LastName cannot be set on create")
    ]


def test_choices_a_field_dates_and_the_fields_a_choice_holds_back() -> None:
    # Values are choices of their own (a user.updated stamps only those that changed); a
    # selection text speaks for the values its target does not map as fields (for all of
    # them when it maps none) and holds those back; any stamp of its preference holds it back.
    both, text_only, values_only, text_and_one = (
        parse_mapping(
            "targets:\n  - sobject: Contact\n    match_field: Email\n"
            "    sync_state_field: S__c\n" + extra
        ).targets[0]
        for extra in (
            "    purposes: {newsletter: N__c}\n    preferences: {topics: T__c}\n"
            "    preference_values: {topics: {offers: O__c, news: P__c}}\n",
            "    preferences: {topics: T__c}\n",
            "    preference_values: {topics: {offers: O__c, news: P__c}}\n",
            "    preferences: {topics: T__c}\n    preference_values: {topics: {offers: O__c}}\n",
        )
    )
    assert both.choice_keys() == {
        "N__c": ("purposes", "newsletter"),
        "T__c": ("preferences", "topics", "news", "offers"),
        "O__c": ("preference_values", "topics", "offers"),
        "P__c": ("preference_values", "topics", "news"),
    }
    assert text_only.choice_keys() == {"T__c": ("preferences", "topics")}
    assert text_and_one.choice_keys()["T__c"] == ("preferences", "topics", "offers")
    assert both.gated_by(("purposes", "newsletter")) == ("N__c",)
    assert both.gated_by(("purposes", "analytics")) == ()
    assert set(both.gated_by(("preferences", "topics"))) == {"T__c", "O__c", "P__c"}
    assert both.gated_by(("preferences", "topics", "news", "offers")) == ("T__c",)
    assert set(both.gated_by(("preference_values", "topics", "offers"))) == {"T__c", "O__c"}
    # A text beside the offers field still speaks for "news" (a review found it did not).
    assert set(values_only.gated_by(text_and_one.choice_keys()["T__c"])) == {"P__c"}
    assert values_only.gated_by(("preferences", "topics", "news", "offers")) == ()
    assert text_only.gated_by(("preference_values", "topics", "news")) == ("T__c",)
