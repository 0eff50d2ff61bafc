"""A Salesforce REST API emulator speaking the real wire format over HTTP.

Used by the integration tests and the demo::

    async with SalesforceEmulator(custom_fields={"Contact": [FieldSpec("X__c", "boolean")]}) as emu:
        token_url = f"{emu.url}/services/oauth2/token"
"""

from consumer.devkit.emulator.app import SalesforceEmulator
from consumer.devkit.emulator.state import EmulatorError, FieldSpec

__all__ = ["EmulatorError", "FieldSpec", "SalesforceEmulator"]
