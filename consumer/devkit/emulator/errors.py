"""Error shapes shared by every part of the emulator.

Two kinds of failure exist in Salesforce's REST API, and the emulator keeps them apart:

* a whole request fails: an HTTP error status with a JSON list of ``{message, errorCode}``
  (:class:`ApiError`);
* one record of an sObject Collections call fails: the call is a 200 and that record's result
  is ``{"success": false, "errors": [{statusCode, message, fields}]}`` (:func:`record_error`,
  :func:`failure`).

:class:`EmulatorError` is neither: it reports misuse of the emulator's Python API by a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "ApiError",
    "EmulatorError",
    "JsonObj",
    "failure",
    "not_found",
    "record_error",
]

JsonObj = dict[str, Any]
"""A decoded JSON object."""


class EmulatorError(Exception):
    """Misuse of the emulator's Python API (unknown sObject, bad field spec, ...)."""


class ApiError(Exception):
    """A whole-request failure: ``status`` and Salesforce's JSON list of errors."""

    def __init__(self, status: int, errors: list[JsonObj]) -> None:
        super().__init__(f"{status}: {errors}")
        self.status = status
        self.errors = errors

    @classmethod
    def of(
        cls, status: int, error_code: str, message: str, fields: Sequence[str] | None = None
    ) -> ApiError:
        """One error with the usual ``{message, errorCode[, fields]}`` shape."""
        error: JsonObj = {"message": message, "errorCode": error_code}
        if fields is not None:
            error["fields"] = list(fields)
        return cls(status, [error])


def not_found() -> ApiError:
    """Salesforce's answer for a path, version or sObject it does not know."""
    return ApiError.of(404, "NOT_FOUND", "The requested resource does not exist")


def record_error(status_code: str, message: str, fields: Sequence[str] = ()) -> JsonObj:
    """One entry of a failed record's ``errors`` (collections use ``statusCode``)."""
    return {"statusCode": status_code, "message": message, "fields": list(fields)}


def failure(errors: list[JsonObj]) -> JsonObj:
    """The result of a record that was not saved (no ``id`` key, as in Salesforce)."""
    return {"success": False, "errors": errors}
