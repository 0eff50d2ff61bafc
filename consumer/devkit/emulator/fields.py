"""The custom fields of the example mapping (``mapping.example.yaml``), for the emulator.

One definition shared by the demo, ``python -m consumer.devkit.emulator`` and the tests.
"""

from __future__ import annotations

from consumer.devkit.emulator.state import FieldSpec


def example_custom_fields() -> dict[str, list[FieldSpec]]:
    """Contact and Lead fields the example mapping writes, plus an External ID field
    (``Didomi_Id__c``) and a datetime (``Consent_Synced_At__c``) for the optional modes, and
    the Long Text Area ``Didomi_Sync_State__c`` where the service keeps per-field sync state
    (selectable and writable, never filterable)."""
    sync_state = FieldSpec("Didomi_Sync_State__c", "textarea", length=131_072)
    contact = [
        FieldSpec("Newsletter_Consent__c", "boolean"),
        FieldSpec("Analytics_Consent__c", "boolean"),
        FieldSpec(
            "Newsletter_Topics__c",
            "multipicklist",
            length=4099,
            picklist_values=("product_news", "offers"),
            restricted_picklist=True,
        ),
        FieldSpec("Newsletter_Frequency__c", "string", length=40),
        FieldSpec("Topic_Product_News__c", "boolean"),
        FieldSpec("Topic_Offers__c", "boolean"),
        FieldSpec("Didomi_Id__c", "email", length=80, external_id=True),
        FieldSpec("Consent_Synced_At__c", "datetime"),
        sync_state,
    ]
    lead = [FieldSpec("Newsletter_Consent__c", "boolean"), sync_state]
    return {"Contact": contact, "Lead": lead}


#: The Contact choices of the example mapping (a target's ``purposes``, ``preferences`` and
#: ``preference_values``, indented for a target entry): the bench's and the tests' other
#: Contact mappings use the same ones.
CONTACT_CHOICES = """\
    purposes:
      newsletter: Newsletter_Consent__c
      analytics: Analytics_Consent__c
    preferences:
      topics: Newsletter_Topics__c
      frequency: Newsletter_Frequency__c
    preference_values:
      topics:
        product_news: Topic_Product_News__c
        offers: Topic_Offers__c
"""

#: The example mapping's Contact target (an entry of ``targets``): match mode with the sync
#: state, upsert; the bench's match-mode mapping is this target alone.
CONTACT_MATCH_TARGET = (
    """\
  - sobject: Contact
    upsert_mode: true
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    create_defaults: {LastName: "Unknown"}
"""
    + CONTACT_CHOICES
)

#: The project's example mapping, as in ``tests/fixtures/mapping.example.yaml`` (a unit test
#: keeps the two equal); the demo and the bench run with it. Contact in match mode with the
#: sync state, upsert; Lead update-only.
EXAMPLE_MAPPING = (
    "regulations: [gdpr]\ntargets:\n"
    + CONTACT_MATCH_TARGET
    + """\
  - sobject: Lead
    upsert_mode: false
    match_field: Email
    sync_state_field: Didomi_Sync_State__c
    purposes:
      newsletter: Newsletter_Consent__c
"""
)
