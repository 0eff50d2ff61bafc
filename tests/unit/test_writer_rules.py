"""Small rules of the writer, on plain values."""

from __future__ import annotations

import pytest

from consumer.model.outcomes import SalesforceErrorInfo
from consumer.salesforce.writer import _missing_beyond

SENT = {"Newsletter_Consent__c": False, "Newsletter_Frequency__c": None}


@pytest.mark.parametrize(
    ("code", "fields", "defaults_may_help"),
    [
        # A new person: LastName (not sent) is missing too; the defaults pass creates them,
        # and refuses the emptied preference then.
        ("REQUIRED_FIELD_MISSING", ["LastName", "Newsletter_Frequency__c"], True),
        ("REQUIRED_FIELD_MISSING", ["lastname"], True),
        ("REQUIRED_FIELD_MISSING", [], True),  # says nothing: try the defaults
        # Only a field the write itself empties: a refusal, no defaults pass.
        ("REQUIRED_FIELD_MISSING", ["newsletter_frequency__c"], False),
        ("FIELD_CUSTOM_VALIDATION_EXCEPTION", ["LastName"], False),
    ],
)
def test_when_the_defaults_pass_may_help(
    code: str, fields: list[str], defaults_may_help: bool
) -> None:
    error = SalesforceErrorInfo(code=code, message="m", fields=fields)
    assert _missing_beyond(error, SENT) is defaults_may_help
