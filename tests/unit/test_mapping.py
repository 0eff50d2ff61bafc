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
            "targets: [{sobject: Contact, purposes: {a: A__c}}, "
            "{sobject: contact, purposes: {a: A__c}}]",
            "once",
        ),
        ("targets: [{sobject: Contact, purposes: {a: A__c}, upsert_mode: maybe}]", "upsert_mode"),
        ("targets: {", "not valid YAML"),
    ],
)
def test_bad_mapping_files_say_what_is_wrong(doc: str, fragment: str) -> None:
    with pytest.raises(MappingError, match=r"invalid|YAML") as info:
        parse_mapping(doc)
    assert fragment in str(info.value)
