"""Parsing of ``Sforce-Duplicate-Rule-Header`` by the emulator (every field defaults to false)."""

from __future__ import annotations

import pytest

from consumer.devkit.emulator.duplicates import DuplicateRuleHeader


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, DuplicateRuleHeader()),
        ("", DuplicateRuleHeader()),
        (
            "allowSave=true; includeRecordDetails=false; runAsCurrentUser=false",
            DuplicateRuleHeader(allow_save=True),
        ),
        ("allowSave=true", DuplicateRuleHeader(allow_save=True)),
        (" ALLOWSAVE = True ", DuplicateRuleHeader(allow_save=True)),
        ("allow Save=true", DuplicateRuleHeader(allow_save=True)),
        (
            "runAsCurrentUser=TRUE;includeRecordDetails=true",
            DuplicateRuleHeader(include_record_details=True, run_as_current_user=True),
        ),
        ("allowSave=true, includeRecordDetails=true", DuplicateRuleHeader(True, True, False)),
        ("allowSave=yes", DuplicateRuleHeader()),
        ("allowSave", DuplicateRuleHeader()),
        ("allowSave=false; somethingElse=true", DuplicateRuleHeader()),
    ],
)
def test_header_parsing_is_tolerant_and_defaults_to_false(
    value: str | None, expected: DuplicateRuleHeader
) -> None:
    assert DuplicateRuleHeader.parse(value) == expected
