"""What the catalogue's columns can hold, the same on SQLite and PostgreSQL.

The bounds come from the column types in :mod:`streamd.catalog.models`:
``Integer`` is 32 bits on PostgreSQL (SQLite stores 64), ``BigInteger`` 64 bits
on both. Text must be encodable as UTF-8 (no lone UTF-16 surrogates) and free
of U+0000, which PostgreSQL's ``text`` cannot store. Every catalogue write
passes its values through :func:`check_row` before the transaction starts,
so a value that does not fit is an ``InvalidRequest`` (400), never an
``OverflowError`` or ``UnicodeEncodeError`` from the driver (500), and
nothing is half-written. The HTTP edge (``api/inputs.py``) refuses such
values earlier, with the request's own words; this is the floor under it.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

import sqlalchemy as sa

from ..errors import InvalidRequest
from . import models as m

INTEGER_MIN, INTEGER_MAX = -(1 << 31), (1 << 31) - 1
BIGINT_MIN, BIGINT_MAX = -(1 << 63), (1 << 63) - 1

_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")


def integer_bounds(column: sa.Column[Any]) -> tuple[int, int]:
    """(lowest, highest) value an integer column holds on every back-end."""
    if isinstance(column.type, sa.BigInteger):
        return BIGINT_MIN, BIGINT_MAX
    return INTEGER_MIN, INTEGER_MAX


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored (or be read back as UTF-8), or None when it can."""
    match = _UNSTORABLE_CHARACTER.search(value)
    if match is None:
        return None
    if match.group() == "\x00":
        return "contains U+0000 (NUL), which cannot be stored"
    return f"contains a lone UTF-16 surrogate (U+{ord(match.group()):04X}), which is not valid Unicode"


def check_text(what: str, value: str) -> None:
    problem = text_problem(value)
    if problem is not None:
        raise InvalidRequest(f"{what} {problem}")


def check_row(table: sa.Table, row: Mapping[str, Any], what: str | None = None) -> None:
    """Refuse (InvalidRequest) any value of ``row`` its column in ``table`` cannot hold."""
    for name, value in row.items():
        column = table.c[name]
        label = what or f"Attribute '{name}'"
        if isinstance(value, str):
            check_text(label, value)
        elif isinstance(value, int) and not isinstance(value, bool) and isinstance(column.type, sa.Integer):
            low, high = integer_bounds(column)
            if not low <= value <= high:
                raise InvalidRequest(f"{label} is out of range: {short_number(value)} is not between {low} and {high}")


def short_number(value: int) -> str:
    """An integer as a message shows it: at most about 40 characters, whatever its size."""
    if value.bit_length() > 128:
        return f"a {round(value.bit_length() * 0.30103)}-digit number"
    return str(value)


def check_properties(properties: Mapping[str, str]) -> None:
    for name, value in properties.items():
        check_row(m.image_properties, {"name": name}, "A property name")
        check_row(m.image_properties, {"value": value}, f"Property '{name}'")


def check_tags(tags: Iterable[str]) -> None:
    for tag in tags:
        check_row(m.image_tags, {"value": tag}, "A tag")
