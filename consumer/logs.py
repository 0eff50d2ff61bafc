"""Logging set-up: JSON lines in production, plain text for people. Called at the edge only.

Log lines carry no personal data: outcomes name people (that is their job), logs do not. A
log line that must name a person uses :func:`person_ref`; as a safeguard both formatters replace
anything shaped like an email address in a finished line (message, ``extra`` fields, traceback)
by its person reference, whatever the level.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

# Attributes every LogRecord has; anything else was passed with ``extra=`` and is logged.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

# An email address inside free text. The local part is limited to the usual characters (an
# exotic one is cut at its last unusual character, which still hides the address): quotes,
# braces and slashes belong to the JSON or repr around it. Not preceded by a backslash, so that
# in an escaped line "\njane@x.com" is read as "jane@x.com", not "njane@x.com". The domain
# must end in a label of letters, which leaves versions ("pkg@1.2.3") alone. "%40" is an "@"
# in a URL (a query string). Every part has its RFC maximum length so that a huge run of word
# characters costs linear time, not squared.
_EMAIL_IN_TEXT = re.compile(r"(?<!\\)[\w.+-]{1,64}(?:@|%40)(?:[\w-]{1,63}\.){1,8}[^\W\d_]{2,63}\b")


def person_ref(email_key: str) -> str:
    """A short, stable reference to a person for log lines, instead of their email.

    The first 12 hex characters of the SHA-256 of the trimmed, lower-cased email: every
    spelling of one address gives the same reference, so lines about one person can be found
    (from their email) and correlated, without the email being written anywhere.
    """
    return hashlib.sha256(email_key.strip().lower().encode("utf-8")).hexdigest()[:12]


def redact(text: str) -> str:
    """``text`` with every email address replaced by ``<person REF>`` (see :func:`person_ref`)."""
    if "@" not in text and "%40" not in text:  # nearly every line: skip the expression
        return text
    return _EMAIL_IN_TEXT.sub(
        lambda m: f"<person {person_ref(m.group(0).replace('%40', '@'))}>", text
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return redact(orjson.dumps(doc, default=str).decode())


class TextFormatter(logging.Formatter):
    """Human-readable lines with the ``extra`` fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return redact(line)


def configure(level: str = "INFO", fmt: str = "json") -> None:
    """Route all logging to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka is chatty at INFO about every group change; keep its warnings and errors.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
