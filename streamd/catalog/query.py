"""Image-list queries: Glance's filter, operator, sort and paging rules.

``parse_list_params`` turns the query string of ``GET /v2/images`` (as a list
of key/value pairs) into an ``ImageQuery``; ``Catalog.list_images`` turns that
into SQL. Every rule here is Glance's (``glance/api/v2/images.py``
``RequestDeserializer.index`` and ``glance/db/sqlalchemy/api.py``).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field

from ..errors import InvalidRequest
from . import models
from .values import integer_bounds, short_number

SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
SORT_DIRS = ("asc", "desc")
IN_FIELDS = ("name", "id", "status", "container_format", "disk_format")
TIME_FIELDS = ("created_at", "updated_at")
TIME_OPS = ("gt", "gte", "lt", "lte", "neq", "eq")
RANGE_FIELDS = ("size", "virtual_size", "min_disk", "min_ram")
VISIBILITIES = ("community", "public", "private", "shared", "all")
MEMBER_STATUSES = ("pending", "accepted", "rejected", "all")
# Columns compared for equality when named as a filter; anything else is a property.
EQUALITY_COLUMNS = ("checksum", "os_hash_value", "os_hash_algo", "owner", "name", "id", "status",
                    "container_format", "disk_format", "size", "virtual_size", "min_disk", "min_ram")
# Glance takes each of these out of the query once (webob's ``MultiDict.pop``: the first value);
# a repeat stays behind among the filters, where it is a property filter like any unknown key.
_POPPED_ONCE = ("limit", "marker", "member_status", "sort")


@dataclass
class ImageQuery:
    limit: int
    marker: str | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    # Direction of the created_at/id tiebreakers appended to ``sort``: the direction given when
    # exactly one was given, else desc (Glance's ``_image_get_all``).
    tiebreak_dir: str = "desc"
    visibility: str | None = None
    member_status: str = "accepted"
    os_hidden: bool = False
    protected: bool | None = None
    tags: list[str] = field(default_factory=list)
    # (column, op, value): op in eq/neq/in/gt/gte/lt/lte, or outside (value: (low, high);
    # column < low or column >= high)
    conditions: list[tuple[str, str, object]] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)


# The ISO 8601 forms Glance accepts (oslo.utils ``parse_isotime``, i.e. the iso8601 library):
# YYYY, YYYY-M[M], YYYY-M[M]-D[D] or YYYYMMDD, then optionally [ T]hh[[:]mm][[:]s[s][.,fraction]]
# and a zone (Z, +hh, +hhmm, +hh:mm). No zone means UTC. Nothing may surround it.
_ISOTIME_RE = re.compile(r"""
    (?P<year>[0-9]{4})
    (?:
        (?: -(?P<month1>[0-9]{1,2}) | (?P<month2>[0-9]{2})(?!$) )
        (?:
            (?: -(?P<day1>[0-9]{1,2}) | (?P<day2>[0-9]{2}) )
            (?:
                [ T](?P<hour>[0-9]{2})
                (?: :?(?P<minute>[0-9]{2}) )?
                (?: :?(?P<second>[0-9]{1,2}) (?: [.,](?P<fraction>[0-9]+) )? )?
                (?P<zone> Z | (?P<sign>[-+])(?P<zone_hour>[0-9]{2}) :? (?P<zone_minute>[0-9]{2})? )?
            )?
        )?
    )?
    $""", re.VERBOSE)


def parse_isotime(value: str) -> dt.datetime:
    """A naive UTC datetime, or ValueError, for exactly the strings Glance takes as ISO 8601."""
    match = _ISOTIME_RE.match(value)
    if match is None:
        raise ValueError(value)
    g = match.groupdict()

    def number(*names: str, default: int = 0) -> int:
        for name in names:
            if g[name] is not None:
                return int(g[name])
        return default

    try:
        zone = dt.timezone.utc
        if g["sign"] is not None:
            sign = -1 if g["sign"] == "-" else 1
            zone = dt.timezone(sign * dt.timedelta(hours=number("zone_hour"), minutes=number("zone_minute")))
        micro = int(((g["fraction"] or "") + "000000")[:6])
        parsed = dt.datetime(number("year"), number("month1", "month2", default=1), number("day1", "day2", default=1),
                             number("hour"), number("minute"), number("second"), micro, tzinfo=zone)
        return parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    except (ValueError, OverflowError):
        raise ValueError(value) from None


def split_filter_op(expression: str) -> tuple[str, str]:
    """``op:value``; a bare ISO time with colons, or no colon at all, means eq."""
    left, sep, right = expression.partition(":")
    if not sep:
        return "eq", expression
    try:
        parse_isotime(expression)
    except ValueError:
        return left, right
    return "eq", expression


def _check_quotes(value: str) -> None:
    """Glance's quote rules for ``in:`` lists; a quote right after a backslash does not count."""
    inside = False
    for i, char in enumerate(value):
        if char != '"' or (i and value[i - 1] == "\\"):
            continue
        if not inside and i and value[i - 1] != ",":
            raise InvalidRequest(f"Invalid filter value {value}. There is no comma before opening quotation mark.")
        if inside and i + 1 != len(value) and value[i + 1] != ",":
            raise InvalidRequest(f"Invalid filter value {value}. There is no comma after closing quotation mark.")
        inside = not inside
    if inside:
        raise InvalidRequest(f"Invalid filter value {value}. The quote is not closed.")


def _closing_quote(value: str, start: int) -> int:
    """Index of the quote closing a quoted item whose text starts at ``start``, or -1.

    A backslash takes the next character with it (and both stay in the value, as in Glance).
    """
    i = start
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value) or value[i + 1] == "\n":
                return -1
            i += 2
        elif value[i] == '"':
            return i
        else:
            i += 1
    return -1


def split_in_values(value: str) -> list[str]:
    """The items of an ``in:`` list (api-wg rules, as Glance applies them).

    Items are separated by commas; an item holding commas is double-quoted. A trailing comma
    adds nothing, an empty list is empty, and two commas in a row give an empty item.
    """
    _check_quotes(value)
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        if value[i] == '"':
            end = _closing_quote(value, i + 1)
            if end >= 0:
                items.append(value[i + 1:end])
                i = end + 1
                if i < n and value[i] == ",":
                    i += 1
                continue
        if value[i] == ",":
            items.append("")
            i += 1
            continue
        end = value.find(",", i)
        end = n if end < 0 else end
        items.append(value[i:end])
        i = end + 1
    return items


def _sort_key(key: str) -> str:
    if key not in SORT_KEYS:
        raise InvalidRequest(f"Invalid sort key: {key}. It must be one of the following: {', '.join(SORT_KEYS)}.")
    return key


def _sort_dir(direction: str) -> str:
    if direction not in SORT_DIRS:
        raise InvalidRequest(f"Invalid sort direction: {direction}")
    return direction


def _parse_sort(sort: str | None, sort_keys: list[str], sort_dirs: list[str]) -> tuple[list[tuple[str, str]], str]:
    """The (key, direction) pairs asked for, and the direction of the created_at/id tiebreakers.

    ``sort=name:asc,size`` (a key without a direction is desc) or the classic repeatable
    ``sort_key``/``sort_dir``: no direction means desc, one applies to every key, otherwise
    there must be one per key. The two syntaxes do not mix.
    """
    keys: list[str] = []
    dirs: list[str] = []
    if sort is not None:
        if sort_keys or sort_dirs:
            raise InvalidRequest("Old and new sorting syntax cannot be combined")
        for item in sort.strip().split(","):
            key, _, direction = item.partition(":")
            keys.append(_sort_key(key.strip()))
            dirs.append(_sort_dir((direction or "desc").strip()))
    else:
        keys = [_sort_key(k.strip()) for k in sort_keys]
        dirs = [_sort_dir(d.strip()) for d in sort_dirs]
        if len(dirs) > 1 and len(dirs) != len(keys):
            raise InvalidRequest("Number of sort dirs does not match the number of sort keys")
    keys = keys or ["created_at"]
    dirs = dirs or ["desc"]
    if len(dirs) == 1:
        return [(k, dirs[0]) for k in keys], dirs[0]
    return list(zip(keys, dirs)), "desc"


def _time_conditions(column: str, op: str, when: dt.datetime) -> list[tuple[str, str, object]]:
    """A time filter, compared at the precision the API shows times in: the second.

    A time copied from an image's ``created_at`` finds that image with ``eq``/``gte``/``lte``
    and not with ``gt``/``lt``, although the catalogue keeps microseconds.
    """
    start = when.replace(microsecond=0)
    try:
        following: dt.datetime | None = start + dt.timedelta(seconds=1)
    except OverflowError:
        following = None
    whole = start == when
    ceiling = start if whole else following
    never: list[tuple[str, str, object]] = [(column, "in", [])]
    if op == "gt":
        return [(column, "gte", following)] if following else never
    if op == "gte":
        return [(column, "gte", ceiling)] if ceiling else never
    if op == "lt":
        return [(column, "lt", ceiling)] if ceiling else []
    if op == "lte":
        return [(column, "lt", following)] if following else []
    if op == "eq":
        if not whole:
            return never
        return [(column, "gte", start)] + ([(column, "lt", following)] if following else [])
    # neq
    if not whole:
        return []
    return [(column, "outside", (start, following))] if following else [(column, "lt", start)]


def parse_list_params(params: list[tuple[str, str]], *, limit_default: int, limit_max: int) -> ImageQuery:
    """Glance's rules for ``GET /v2/images``; raises ``InvalidRequest`` on any bad value.

    Repeated keys behave as in Glance too: ``tag``, ``sort_key`` and ``sort_dir`` accumulate;
    ``limit``, ``marker``, ``member_status`` and ``sort`` take their first value (a repeat is
    left among the filters); a filter named twice takes its last value.
    """
    rest = list(params)
    first: dict[str, str] = {}
    for name in _POPPED_ONCE:
        for n, (key, value) in enumerate(rest):
            if key == name:
                first[name] = value
                del rest[n]
                break
    multi = {name: [v for k, v in rest if k == name] for name in ("tag", "sort_key", "sort_dir")}
    rest = [(k, v) for k, v in rest if k not in multi]
    filters = dict(rest)  # the last value of each key

    visibility = filters.get("visibility")
    if visibility and visibility not in VISIBILITIES:
        raise InvalidRequest(f"Invalid visibility value: {visibility}")
    if "changes-since" in filters:
        raise InvalidRequest('The "changes-since" filter is no longer available on v2.')
    member_status = first.get("member_status", "accepted")
    if member_status not in MEMBER_STATUSES:
        raise InvalidRequest(f"Invalid status: {member_status}")
    query = ImageQuery(limit=limit_default, member_status=member_status)
    if "limit" in first:
        try:
            limit = int(first["limit"])
        except ValueError:
            raise InvalidRequest("limit param must be an integer") from None
        if limit < 0:
            raise InvalidRequest("limit param must be positive")
        query.limit = min(limit, limit_max)
    query.marker = first.get("marker")
    query.tags = [t.strip() for t in multi["tag"]]
    query.sort, query.tiebreak_dir = _parse_sort(first.get("sort"), multi["sort_key"], multi["sort_dir"])

    hidden = filters.pop("os_hidden", "false").lower()
    if hidden not in ("true", "false"):
        raise InvalidRequest(f"Invalid value '{hidden}' for 'os_hidden' filter. Valid values are 'true' or 'false'.")
    query.os_hidden = hidden == "true"
    protected = filters.pop("protected", None)
    if protected is not None:
        if protected not in ("true", "false"):
            raise InvalidRequest(f"Invalid value '{protected}' for 'protected' filter. "
                             "Valid values are 'true' or 'false'.")
        query.protected = protected == "true"
    filters.pop("deleted", None)  # Glance lists undeleted images, whatever the query says

    # These three take their first value; a second one stays a filter (an equality, like the first).
    for name in ("visibility", "checksum", "os_hash_value"):
        values = [v for k, v in rest if k == name]
        if not values:
            continue
        if len(values) == 1:
            del filters[name]
        if name == "visibility":
            query.visibility = values[0]
        else:
            query.conditions.append((name, "eq", values[0]))

    for key, value in filters.items():
        if key.endswith(("_min", "_max")):
            try:
                number = int(value)
            except ValueError:
                raise InvalidRequest("Unable to filter on a range with a non-numeric value.") from None
            column = key[:-4]
            if column not in RANGE_FIELDS:
                raise InvalidRequest(f"Unable to filter on a range of '{column}': "
                                 f"ranges apply to {', '.join(RANGE_FIELDS)}.")
            _check_column_range(key, column, number)
            query.conditions.append((column, "gte" if key.endswith("_min") else "lte", number))
        elif key in TIME_FIELDS:
            op, text = split_filter_op(value)
            try:
                when = parse_isotime(text)
            except ValueError:
                raise InvalidRequest(f'Bad "{key}" query filter format. Use ISO 8601 DateTime notation.') from None
            if op not in TIME_OPS:
                raise InvalidRequest("Unable to filter on a unknown operator.")
            query.conditions.extend(_time_conditions(key, op, when))
        elif key in IN_FIELDS:
            op, text = split_filter_op(value)
            if op == "in":
                query.conditions.append((key, "in", split_in_values(text)))
            elif op == "eq":
                query.conditions.append((key, "eq", text))
            else:
                raise InvalidRequest(f"Unable to filter by unknown operator '{op}'.")
        elif key == "visibility":
            query.conditions.append((key, "eq", value))
        elif key in EQUALITY_COLUMNS:
            if key in RANGE_FIELDS:
                try:
                    number = int(value)
                except ValueError:
                    # No integer equals it: Glance (on SQLite and MySQL) lists nothing.
                    query.conditions.append((key, "in", []))
                else:
                    _check_column_range(key, key, number)
                    query.conditions.append((key, "eq", number))
            else:
                query.conditions.append((key, "eq", value))
        else:
            # Glance treats any other key as an equality filter on an extra property.
            query.properties.append((key, value))
    return query


def _check_column_range(key: str, column: str, number: int) -> None:
    """A filter value the column's type cannot hold is refused: the database would fail on it."""
    low, high = integer_bounds(models.images.c[column])
    if not low <= number <= high:
        raise InvalidRequest(f"Unable to filter on '{key}': {short_number(number)} is out of range "
                             f"(from {low} to {high}).")


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def is_uuid_like(value: str) -> bool:
    return bool(_UUID_RE.match(value))
