"""A real tokenizer and parser for the subset of SOQL the sync client sends.

The client's SOQL escaping is tested against this parser, so it is deliberately strict in the
same places Salesforce is: string literals accept only the documented backslash escapes, an
unterminated literal or a stray token is a ``MALFORMED_QUERY``, and nothing after a complete
query is ignored (SOQL has no comments, so ``--`` is just a syntax error).

Grammar (keywords case-insensitive)::

    query      := SELECT ident ("," ident)* FROM ident
                  [WHERE cond (AND cond)*]
                  [ORDER BY ident [ASC|DESC] ("," ident [ASC|DESC])*]
                  [LIMIT integer]
    cond       := ident ("=" | "!=" | "<>") literal
                | ident [NOT] IN "(" literal ("," literal)* ")"
    literal    := 'string' | TRUE | FALSE | NULL | integer

Binding the names to sObjects and fields is left to the caller (the emulator's state), which
turns unknown names into ``INVALID_TYPE`` / ``INVALID_FIELD`` errors via :func:`error_at`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal as TypingLiteral

__all__ = [
    "MAX_LITERAL_LENGTH",
    "Condition",
    "FieldRef",
    "Literal",
    "OrderItem",
    "SoqlError",
    "SoqlQuery",
    "error_at",
    "parse",
]

MAX_LITERAL_LENGTH = 4000
"""Salesforce caps each string literal in a SOQL statement at 4,000 characters."""

_KEYWORDS = frozenset(
    {
        "SELECT",
        "FROM",
        "WHERE",
        "AND",
        "OR",
        "NOT",
        "IN",
        "LIMIT",
        "ORDER",
        "BY",
        "ASC",
        "DESC",
        "TRUE",
        "FALSE",
        "NULL",
        "NULLS",
        "FIRST",
        "LAST",
        "OFFSET",
        "GROUP",
        "HAVING",
        "LIKE",
        "INCLUDES",
        "EXCLUDES",
        "WITH",
        "FOR",
    }
)

# The escapes SOQL documents for string literals; anything else after a backslash is an error.
_SIMPLE_ESCAPES = {
    "'": "'",
    '"': '"',
    "\\": "\\",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "b": "\b",
    "f": "\f",
}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")

TokenKind = TypingLiteral["IDENT", "STRING", "NUMBER", "COMMA", "LPAREN", "RPAREN", "OP", "EOF"]
Operator = TypingLiteral["=", "!=", "IN", "NOT IN"]
LiteralKind = TypingLiteral["string", "boolean", "null", "number"]


class SoqlError(Exception):
    """A query Salesforce would reject; ``error_code`` is the REST ``errorCode``."""

    def __init__(self, error_code: str, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message


def error_at(source: str, pos: int, text: str, error_code: str = "MALFORMED_QUERY") -> SoqlError:
    """Build an error whose message looks like Salesforce's: the query line, a caret, the
    ``ERROR at Row:R:Column:C`` line and the explanation."""
    pos = max(0, min(pos, len(source)))
    row = source.count("\n", 0, pos) + 1
    line_start = source.rfind("\n", 0, pos) + 1
    line_end = source.find("\n", pos)
    if line_end == -1:
        line_end = len(source)
    column = pos - line_start + 1
    # Queries carrying long IN lists would make the echo unreadable; show a window around the
    # error instead (Salesforce also trims the echoed statement).
    window_start = max(line_start, pos - 60)
    window_end = min(line_end, pos + 60)
    excerpt = source[window_start:window_end]
    caret = " " * (pos - window_start) + "^"
    message = f"\n{excerpt}\n{caret}\nERROR at Row:{row}:Column:{column}\n{text}"
    return SoqlError(error_code, message)


@dataclass(frozen=True)
class _Token:
    kind: TokenKind
    text: str  # raw source text (for STRING: the decoded value)
    pos: int

    @property
    def upper(self) -> str:
        return self.text.upper()

    def is_keyword(self, *words: str) -> bool:
        return self.kind == "IDENT" and self.upper in words


@dataclass(frozen=True)
class FieldRef:
    """A name as written in the query, with its offset for error messages."""

    name: str
    pos: int


@dataclass(frozen=True)
class Literal:
    """A literal value: a decoded string, a boolean, None for NULL, or an integer."""

    kind: LiteralKind
    value: str | bool | int | None
    pos: int


@dataclass(frozen=True)
class Condition:
    """``field op value`` or ``field [NOT] IN (values)``."""

    field: FieldRef
    op: Operator
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class OrderItem:
    """One ``ORDER BY`` term."""

    field: FieldRef
    descending: bool


@dataclass(frozen=True)
class SoqlQuery:
    """A parsed query, names unresolved."""

    source: str
    fields: tuple[FieldRef, ...]
    sobject: FieldRef
    where: tuple[Condition, ...]
    order_by: tuple[OrderItem, ...]
    limit: int | None


def _is_ident_start(ch: str) -> bool:
    return ch.isascii() and (ch.isalpha() or ch == "_")


def _is_ident_part(ch: str) -> bool:
    return ch.isascii() and (ch.isalnum() or ch == "_")


def _read_string(source: str, start: int) -> tuple[str, int]:
    """Decode the literal whose opening quote is at ``start``; return (value, end offset)."""
    out: list[str] = []
    i = start + 1
    n = len(source)
    while i < n:
        ch = source[i]
        if ch == "'":
            value = "".join(out)
            if len(value) > MAX_LITERAL_LENGTH:
                raise error_at(
                    source,
                    start,
                    f"Invalid string literal: literal of {len(value)} characters exceeds the "
                    f"maximum length of {MAX_LITERAL_LENGTH} characters",
                )
            return value, i + 1
        if ch == "\\":
            if i + 1 >= n:
                break  # a trailing backslash escapes nothing: the literal is unterminated
            esc = source[i + 1]
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                i += 2
                continue
            if esc == "u":
                digits = source[i + 2 : i + 6]
                if len(digits) == 4 and all(d in _HEX_DIGITS for d in digits):
                    out.append(chr(int(digits, 16)))
                    i += 6
                    continue
                bad = source[i : i + 2 + len(digits)]
            else:
                bad = source[i : i + 2]
            literal_end = source.find("'", i + 2)
            literal_text = source[start : literal_end + 1 if literal_end != -1 else n]
            raise error_at(
                source,
                i,
                f"Invalid string literal {literal_text}. Illegal character sequence '{bad}' in "
                "string literal.",
            )
        out.append(ch)
        i += 1
    raise error_at(source, start, "Invalid string literal: missing closing quote (')")


def _tokenize(source: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(source)
    while i < n:
        ch = source[i]
        if ch.isspace():
            i += 1
        elif _is_ident_start(ch):
            j = i + 1
            while j < n and _is_ident_part(source[j]):
                j += 1
            tokens.append(_Token("IDENT", source[i:j], i))
            i = j
        elif ch.isascii() and ch.isdigit():
            j = i + 1
            while j < n and source[j].isascii() and source[j].isdigit():
                j += 1
            tokens.append(_Token("NUMBER", source[i:j], i))
            i = j
        elif ch == "'":
            value, end = _read_string(source, i)
            tokens.append(_Token("STRING", value, i))
            i = end
        elif ch == ",":
            tokens.append(_Token("COMMA", ch, i))
            i += 1
        elif ch == "(":
            tokens.append(_Token("LPAREN", ch, i))
            i += 1
        elif ch == ")":
            tokens.append(_Token("RPAREN", ch, i))
            i += 1
        elif ch == "=":
            tokens.append(_Token("OP", "=", i))
            i += 1
        elif source.startswith("!=", i) or source.startswith("<>", i):
            tokens.append(_Token("OP", "!=", i))
            i += 2
        else:
            raise error_at(source, i, f"unexpected token: '{ch}'")
    tokens.append(_Token("EOF", "<EOF>", n))
    return tokens


class _Parser:
    """Recursive-descent parser over the token list."""

    def __init__(self, source: str) -> None:
        self._source = source
        self._tokens = _tokenize(source)
        self._i = 0

    def _peek(self) -> _Token:
        return self._tokens[self._i]

    def _next(self) -> _Token:
        tok = self._tokens[self._i]
        if tok.kind != "EOF":
            self._i += 1
        return tok

    def _unexpected(self, tok: _Token) -> SoqlError:
        shown = tok.text if tok.kind != "STRING" else f"'{tok.text}'"
        return error_at(self._source, tok.pos, f"unexpected token: {shown}")

    def _expect_keyword(self, word: str) -> _Token:
        tok = self._next()
        if not tok.is_keyword(word):
            raise self._unexpected(tok)
        return tok

    def _expect_kind(self, kind: TokenKind) -> _Token:
        tok = self._next()
        if tok.kind != kind:
            raise self._unexpected(tok)
        return tok

    def _name(self) -> FieldRef:
        tok = self._next()
        # Reserved words cannot name fields or objects.
        if tok.kind != "IDENT" or tok.upper in _KEYWORDS:
            raise self._unexpected(tok)
        return FieldRef(tok.text, tok.pos)

    def _literal(self) -> Literal:
        tok = self._next()
        if tok.kind == "STRING":
            return Literal("string", tok.text, tok.pos)
        if tok.kind == "NUMBER":
            return Literal("number", int(tok.text), tok.pos)
        if tok.is_keyword("TRUE", "FALSE"):
            return Literal("boolean", tok.upper == "TRUE", tok.pos)
        if tok.is_keyword("NULL"):
            return Literal("null", None, tok.pos)
        raise self._unexpected(tok)

    def _condition(self) -> Condition:
        field = self._name()
        tok = self._next()
        if tok.kind == "OP":
            op: Operator = "=" if tok.text == "=" else "!="
            return Condition(field, op, (self._literal(),))
        if tok.is_keyword("NOT"):
            self._expect_keyword("IN")
            return Condition(field, "NOT IN", self._literal_list())
        if tok.is_keyword("IN"):
            return Condition(field, "IN", self._literal_list())
        raise self._unexpected(tok)

    def _literal_list(self) -> tuple[Literal, ...]:
        self._expect_kind("LPAREN")
        values = [self._literal()]
        while self._peek().kind == "COMMA":
            self._next()
            values.append(self._literal())
        self._expect_kind("RPAREN")
        return tuple(values)

    def parse(self) -> SoqlQuery:
        self._expect_keyword("SELECT")
        fields = [self._name()]
        while self._peek().kind == "COMMA":
            self._next()
            fields.append(self._name())
        seen: set[str] = set()
        for ref in fields:
            if ref.name.lower() in seen:
                raise error_at(self._source, ref.pos, f"duplicate field selected: {ref.name}")
            seen.add(ref.name.lower())
        self._expect_keyword("FROM")
        sobject = self._name()

        where: list[Condition] = []
        if self._peek().is_keyword("WHERE"):
            self._next()
            where.append(self._condition())
            while self._peek().is_keyword("AND"):
                self._next()
                where.append(self._condition())

        order_by: list[OrderItem] = []
        if self._peek().is_keyword("ORDER"):
            self._next()
            self._expect_keyword("BY")
            while True:
                ref = self._name()
                descending = False
                if self._peek().is_keyword("ASC", "DESC"):
                    descending = self._next().upper == "DESC"
                order_by.append(OrderItem(ref, descending))
                if self._peek().kind != "COMMA":
                    break
                self._next()

        limit: int | None = None
        if self._peek().is_keyword("LIMIT"):
            self._next()
            limit = int(self._expect_kind("NUMBER").text)

        tail = self._next()
        if tail.kind != "EOF":
            raise self._unexpected(tail)
        return SoqlQuery(
            source=self._source,
            fields=tuple(fields),
            sobject=sobject,
            where=tuple(where),
            order_by=tuple(order_by),
            limit=limit,
        )


def parse(source: str) -> SoqlQuery:
    """Parse ``source``; raise :class:`SoqlError` (``MALFORMED_QUERY``) on any syntax error."""
    if not source.strip():
        raise SoqlError("MALFORMED_QUERY", "A query string has to be specified")
    return _Parser(source).parse()
