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

from ..errors import BadRequest

SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "id", "created_at", "updated_at")
SORT_DIRS = ("asc", "desc")
IN_FIELDS = ("name", "id", "status", "container_format", "disk_format")
TIME_FIELDS = ("created_at", "updated_at")
TIME_OPS = ("gt", "gte", "lt", "lte", "neq", "eq")
RANGE_FIELDS = ("size", "virtual_size", "min_disk", "min_ram")
# Columns compared for equality when named as a filter; anything else is a property.
EQUALITY_COLUMNS = ("checksum", "os_hash_value", "os_hash_algo", "owner", "name", "id", "status",
                    "container_format", "disk_format", "size", "virtual_size", "min_disk", "min_ram")


@dataclass
class ImageQuery:
    limit: int
    marker: str | None = None
    sort: list[tuple[str, str]] = field(default_factory=list)
    visibility: str | None = None
    member_status: str = "accepted"
    os_hidden: bool = False
    protected: bool | None = None
    tags: list[str] = field(default_factory=list)
    # (column, op, value): op in eq/neq/in/gt/gte/lt/lte
    conditions: list[tuple[str, str, object]] = field(default_factory=list)
    properties: list[tuple[str, str]] = field(default_factory=list)


def parse_bool(name: str, value: str) -> bool:
    low = value.strip().lower()
    if low in ("true", "1", "yes", "on", "t", "y"):
        return True
    if low in ("false", "0", "no", "off", "f", "n"):
        return False
    raise BadRequest(f"Invalid value {value!r} for {name}: expected a boolean")


def parse_isotime(value: str) -> dt.datetime:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(value) from None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return parsed


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


def split_in_values(value: str) -> list[str]:
    """Comma-separated values; a value holding commas is double-quoted (api-wg rules)."""
    values: list[str] = []
    i, n = 0, len(value)
    while i <= n:
        if i < n and value[i] == '"':
            j = i + 1
            buf = []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    buf.append(value[j + 1])
                    j += 2
                    continue
                buf.append(value[j])
                j += 1
            if j >= n:
                raise BadRequest(f"Invalid filter value {value}. The quote is not closed.")
            values.append("".join(buf))
            j += 1
            if j < n and value[j] != ",":
                raise BadRequest(f"Invalid filter value {value}. There is no comma after closing quotation mark.")
            i = j + 1
            if j >= n:
                break
        else:
            j = value.find(",", i)
            if j < 0:
                j = n
            item = value[i:j]
            if '"' in item:
                raise BadRequest(f"Invalid filter value {value}. There is no comma before opening quotation mark.")
            values.append(item)
            i = j + 1
            if j >= n:
                break
    return values


def _parse_sort(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    sort_keys = [v for k, v in params if k == "sort_key"]
    sort_dirs = [v for k, v in params if k == "sort_dir"]
    sort_new = [v for k, v in params if k == "sort"]
    if sort_new and (sort_keys or sort_dirs):
        raise BadRequest("The 'sort' parameter cannot be combined with 'sort_key' or 'sort_dir'.")
    result: list[tuple[str, str]] = []
    if sort_new:
        for chunk in sort_new:
            for item in chunk.split(","):
                key, _, direction = item.strip().partition(":")
                key, direction = key.strip(), (direction.strip() or "desc")
                if key not in SORT_KEYS:
                    raise BadRequest(f"Invalid sort key: {key}. It must be one of the following: {', '.join(SORT_KEYS)}.")
                if direction not in SORT_DIRS:
                    raise BadRequest(f"Invalid sort direction: {direction}")
                result.append((key, direction))
        return result
    for key in sort_keys:
        if key not in SORT_KEYS:
            raise BadRequest(f"Invalid sort key: {key}. It must be one of the following: {', '.join(SORT_KEYS)}.")
    for direction in sort_dirs:
        if direction not in SORT_DIRS:
            raise BadRequest(f"Invalid sort direction: {direction}")
    if sort_dirs and len(sort_dirs) not in (1, len(sort_keys)):
        raise BadRequest("Number of sort dirs does not match the number of sort keys")
    if not sort_keys:
        return [("created_at", sort_dirs[0] if sort_dirs else "desc")]
    dirs = sort_dirs * len(sort_keys) if len(sort_dirs) == 1 else (sort_dirs or ["desc"] * len(sort_keys))
    return list(zip(sort_keys, dirs))


def parse_list_params(params: list[tuple[str, str]], *, limit_default: int, limit_max: int) -> ImageQuery:
    """Glance's rules for ``GET /v2/images``; raises ``BadRequest`` on any bad value."""
    query = ImageQuery(limit=limit_default)
    query.sort = _parse_sort(params)
    seen_single: dict[str, str] = {}
    for key, value in params:
        if key in ("sort_key", "sort_dir", "sort"):
            continue
        if key == "limit":
            try:
                limit = int(value)
            except ValueError:
                raise BadRequest("limit param must be an integer") from None
            if limit < 0:
                raise BadRequest("limit param must be positive")
            query.limit = min(limit, limit_max)
        elif key == "marker":
            query.marker = value
        elif key == "tag":
            query.tags.append(value)
        elif key == "visibility":
            if value not in ("community", "public", "private", "shared", "all"):
                raise BadRequest(f"Invalid visibility value: {value}")
            query.visibility = value
        elif key == "member_status":
            if value not in ("pending", "accepted", "rejected", "all"):
                raise BadRequest(f"Invalid status value: {value}")
            query.member_status = value
        elif key == "os_hidden":
            query.os_hidden = parse_bool("os_hidden", value)
        elif key == "protected":
            query.protected = parse_bool("protected", value)
        elif key == "changes-since":
            raise BadRequest('The "changes-since" filter is no longer available on v2.')
        elif key.endswith(("_min", "_max")) and key[:-4] in RANGE_FIELDS:
            try:
                number = int(value)
            except ValueError:
                raise BadRequest("Unable to filter on a range with a non-numeric value.") from None
            query.conditions.append((key[:-4], "gte" if key.endswith("_min") else "lte", number))
        elif key in TIME_FIELDS:
            op, text = split_filter_op(value)
            if op not in TIME_OPS:
                raise BadRequest(f"Unable to filter by unknown operator '{op}'.")
            try:
                when = parse_isotime(text)
            except ValueError:
                raise BadRequest(f'Bad "{key}" query filter format. Use ISO 8601 DateTime notation.') from None
            query.conditions.append((key, op, when))
        elif key in IN_FIELDS:
            op, text = split_filter_op(value)
            if op == "in":
                query.conditions.append((key, "in", split_in_values(text)))
            elif op == "eq":
                query.conditions.append((key, "eq", text))
            else:
                raise BadRequest(f"Unable to filter by unknown operator '{op}'.")
        elif key in EQUALITY_COLUMNS:
            if key in RANGE_FIELDS:
                try:
                    query.conditions.append((key, "eq", int(value)))
                except ValueError:
                    raise BadRequest(f"Invalid value {value!r} for {key}: expected an integer") from None
            else:
                query.conditions.append((key, "eq", value))
        else:
            # Glance treats any other key as an equality filter on an extra property.
            if len(key) > 255:
                raise BadRequest("Property filter names are at most 255 characters")
            query.properties.append((key, value))
        seen_single[key] = value
    return query


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")


def is_uuid_like(value: str) -> bool:
    return bool(_UUID_RE.match(value))
