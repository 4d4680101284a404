"""Hostile requests at a live server: each is a 4xx with a readable body, and nothing changes.

Hypothesis generates JSON bodies (nesting past the limit, lone UTF-16 surrogates as escapes or
as raw bytes, U+0000, integers past 64 bits, non-finite numbers, invalid UTF-8, wrong types,
odd keys), query strings, headers and Range values, and throws them at the real application
(the ``api`` fixture) on SQLite and PostgreSQL. A refusal must be a 4xx in Glance's JSON
shape with a message, and the catalogue (every image, every field) must be as it was. The
``bounded`` profile keeps this quick; ``HYPOTHESIS_PROFILE=long`` hunts (see conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import socket
import string
from typing import Any, AsyncIterator

import pytest
import yarl
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import ADMIN, MEMBER_A, ApiClient, Reply, both_databases
from streamd.api.inputs import MAX_JSON_DEPTH

pytestmark = both_databases

V21 = "application/openstack-images-v2.1-json-patch"
V20 = "application/openstack-images-v2.0-json-patch"
OCTET = {"Content-Type": "application/octet-stream"}
DATA = bytes(range(256)) * 16  # the active image's 4 KiB
# Stands for a hostile fragment in a document until it is serialized.
MARK = "\u2063hostile\u2063"
_SAFE_TEXT = st.text(string.ascii_letters + string.digits + " _-.", max_size=12)


# -- strategies ----------------------------------------------------------------------------------

def _digits(min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda first, rest: first + rest, st.sampled_from("123456789"),
                     st.text("0123456789", min_size=min_size - 1, max_size=max_size - 1))


@st.composite
def _lone_surrogate(draw: st.DrawFn) -> bytes:
    # A high surrogate followed by ASCII, or a low one after ASCII, pairs with nothing.
    code = draw(st.integers(0xD800, 0xDFFF))
    before, after = draw(_SAFE_TEXT), draw(_SAFE_TEXT)
    return f'"{before}\\u{code:04x}{after}"'.encode()


# JSON string literals no catalogue can store, or that are not UTF-8 at all.
STRING_FRAGMENTS = st.one_of(
    _lone_surrogate(),
    st.builds(lambda a, b: f'"{a}\\u0000{b}"'.encode(), _SAFE_TEXT, _SAFE_TEXT),
    st.builds(lambda a, raw, b: b'"' + a.encode() + raw + b.encode() + b'"', _SAFE_TEXT,
              st.sampled_from([b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xff", b"\xc0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80",
                               b"\x80"]), _SAFE_TEXT),
)


def _nested(depth: int, kind: str) -> bytes:
    if kind == "list":
        return b"[" * depth + b"]" * depth
    return b'{"a":' * depth + b"1" + b"}" * depth


# Any JSON value no valid request holds: the strings above, numbers out of range, nesting too deep.
VALUE_FRAGMENTS = st.one_of(
    STRING_FRAGMENTS,
    st.builds(lambda sign, digits: (sign + digits).encode(), st.sampled_from(["", "-"]), _digits(20, 6000)),
    st.integers(1 << 63, 10**20 - 1).map(lambda n: str(n).encode()),
    st.integers(-(10**20) + 1, -(1 << 63) - 1).map(lambda n: str(n).encode()),
    st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-2.5e999"]),
    st.builds(_nested, st.integers(MAX_JSON_DEPTH + 1, 3000), st.sampled_from(["list", "object"])),
)


def _serialize(document: Any, fragment: bytes) -> bytes:
    text = json.dumps(document, ensure_ascii=False).encode()
    placeholder = json.dumps(MARK, ensure_ascii=False).encode()
    assert text.count(placeholder) == 1
    return text.replace(placeholder, fragment)


@st.composite
def hostile_image_bodies(draw: st.DrawFn) -> bytes:
    """A create body that is fine but for one hostile fragment, somewhere."""
    document: dict[str, Any] = {"name": draw(_SAFE_TEXT), "disk_format": "raw", "container_format": "bare",
                                "os_distro": "cirros"}
    where = draw(st.sampled_from(["name", "property", "key", "tag", "min_ram", "min_disk", "nested", "body"]))
    if where == "body":
        return draw(VALUE_FRAGMENTS)
    if where == "key":
        fragment = draw(STRING_FRAGMENTS)
        document[MARK] = "x"
    else:
        fragment = draw(VALUE_FRAGMENTS)
        if where == "property":
            document["p_" + draw(_SAFE_TEXT)] = MARK
        elif where == "tag":
            document["tags"] = ["a", MARK, "b"]
        elif where == "nested":
            document["locations"] = [{"url": "file:///x", "metadata": {"deep": [MARK]}}]
        else:
            document[where] = MARK
    return _serialize(document, fragment)


@st.composite
def hostile_patches(draw: st.DrawFn) -> tuple[str, bytes]:
    """(media type, a JSON patch that is fine but for one hostile fragment)."""
    media = draw(st.sampled_from([V21, V20]))
    where = draw(st.sampled_from(["value", "path", "op", "key", "list value", "body", "second op"]))
    if where == "body":
        return media, draw(VALUE_FRAGMENTS)

    def op(path: str, value: Any) -> dict[str, Any]:
        return {"op": "replace", "path": path, "value": value} if media == V21 else {"replace": path, "value": value}

    ops = [op("/name", "renamed"), op("/os_distro", "fedora")]
    fragment = draw(STRING_FRAGMENTS if where in ("path", "op", "key") else VALUE_FRAGMENTS)
    if where == "value":
        ops[0] = op("/min_ram", MARK) if draw(st.booleans()) else op("/os_distro", MARK)
    elif where == "list value":
        ops[0] = op("/tags", ["ok", MARK])
    elif where == "path":
        ops[1] = op(MARK, "x")
    elif where == "op":
        ops[1] = {"op": MARK, "path": "/name", "value": "x"} if media == V21 else {MARK: "/name", "value": "x"}
    elif where == "key":
        ops[1] = dict(ops[1], **{MARK: 1})
    else:
        ops.append(op("/colour", MARK))
    return media, _serialize(ops, fragment)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec=None, exclude_categories=())),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(st.characters(codec=None, exclude_categories=()), max_size=8), children, max_size=4),
    max_leaves=12)
ODD_KEYS = st.one_of(st.sampled_from(["name", "visibility", "protected", "os_hidden", "min_ram", "min_disk", "tags",
                                      "disk_format", "container_format", "owner", "id", "status", "size", "locations",
                                      "", " ", "os_glance_x", "self", "a" * 300]),
                     st.text(st.characters(codec=None, exclude_categories=()), max_size=20))

# Percent-encodings that do not decode to UTF-8 text without NUL.
BAD_ESCAPES = st.sampled_from(["%FF", "%ED%A0%80", "%ED%BF%BF", "%00", "%C0%80", "%E2%82", "%80", "%F8%88%80%80%80",
                               "%C3", "%E0%80%AF"])
QUERY_KEYS = st.sampled_from(["name", "status", "size_min", "size_max", "virtual_size_min", "min_ram", "min_disk_max",
                              "tag", "marker", "owner", "created_at", "sort_key", "limit", "os_distro", "member_status",
                              "visibility", "id"])


def _quote(text: str) -> str:
    return yarl.URL.build(query={"k": text}).raw_query_string[2:]


# -- helpers ------------------------------------------------------------------------------------

def assert_refused(reply: Reply, *statuses: int) -> None:
    """A 4xx (one of ``statuses``) in Glance's flat JSON shape, with a message a person can read."""
    assert 400 <= reply.status < 500 and (not statuses or reply.status in statuses), (reply.status, reply.body[:300])
    error = reply.error
    assert error["code"] == reply.status
    assert isinstance(error["message"], str) and error["message"].strip()
    error["message"].encode("utf-8")  # no lone surrogate made it into the answer
    assert len(reply.body) < 4096


async def catalogue(api: ApiClient) -> list[dict[str, Any]]:
    """Every image, every field (as the admin sees them, hidden ones too)."""
    shown = []
    for hidden in ("false", "true"):
        reply = await api.call("GET", "/v2/images", as_=ADMIN, params={"limit": "1000", "os_hidden": hidden,
                                                                       "visibility": "all"})
        assert reply.status == 200, reply.body
        shown += reply.json["images"]
    return sorted(shown, key=lambda image: image["id"])


async def raw_call(api: ApiClient, method: str, target: str, *, body: bytes | None = None,
                   headers: dict[str, str] | None = None, as_: dict[str, str] = MEMBER_A) -> Reply:
    """A request whose target (path and query) goes out exactly as written."""
    all_headers = {"Accept": "application/json", **as_, **(headers or {})}
    async with api.session.request(method, yarl.URL(api.base + target, encoded=True), data=body,
                                   headers=all_headers) as response:
        return Reply(response.status, response.headers, await response.read())


@pytest.fixture
async def image(api: ApiClient) -> dict[str, Any]:
    """A queued image with properties and tags, for the patches to aim at."""
    return await api.create(name="target", os_distro="cirros", colour="blue", tags=["t1", "t2"], min_ram=64)


@pytest.fixture
async def active_image(api: ApiClient) -> AsyncIterator[dict[str, Any]]:
    created = await api.create(name="with data")
    reply = await api.call("PUT", f"/v2/images/{created['id']}/file", as_=MEMBER_A, data=DATA, headers=OCTET)
    assert reply.status == 204, reply.body
    yield created


# -- bodies -------------------------------------------------------------------------------------

@given(body=hostile_image_bodies())
# What probing found first: each was a 500.
@example(body=b"[" * 5000 + b"]" * 5000)
@example(body=b'{"name": "\\ud800"}')
@example(body=b'{"name": "\xed\xa0\x80"}')
@example(body=b'{"min_ram": 99999999999999999999999}')
@example(body=b'{"min_disk": ' + b"9" * 5000 + b"}")
async def test_hostile_create_bodies_are_refused_and_create_nothing(api: ApiClient, body: bytes) -> None:
    before = await catalogue(api)
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, data=body, headers={"Content-Type": "application/json"})
    assert_refused(reply, 400)
    assert reply.error["message"].startswith("Malformed JSON in request body")
    assert await catalogue(api) == before


@given(patch=hostile_patches())
@example(patch=(V21, b"[" * 5000 + b"]" * 5000))
@example(patch=(V21, b'[{"op": "add", "path": "/min_ram", "value": 1180591620717411303424}]'))
@example(patch=(V21, b'[{"op": "add", "path": "/colour", "value": "\\udfff"}]'))
async def test_hostile_patches_are_refused_and_change_nothing(api: ApiClient, image: dict[str, Any],
                                                              patch: tuple[str, bytes]) -> None:
    media, body = patch
    before = await catalogue(api)
    reply = await api.call("PATCH", f"/v2/images/{image['id']}", as_=MEMBER_A, data=body,
                           headers={"Content-Type": media})
    assert_refused(reply, 400)
    assert await catalogue(api) == before


@given(fragment=VALUE_FRAGMENTS, path=st.sampled_from(["members", "import", "members/" + "b" * 32]))
async def test_hostile_member_and_import_bodies_are_refused(api: ApiClient, image: dict[str, Any],
                                                            fragment: bytes, path: str) -> None:
    if path == "import":
        body = _serialize({"method": {"name": "web-download", "uri": MARK}}, fragment)
    elif path == "members":
        body = _serialize({"member": MARK}, fragment)
    else:
        body = _serialize({"status": MARK}, fragment)
    before = await catalogue(api)
    method = "PUT" if path.startswith("members/") else "POST"
    reply = await api.call(method, f"/v2/images/{image['id']}/{path}", as_=MEMBER_A, data=body,
                           headers={"Content-Type": "application/json"})
    assert_refused(reply, 400)
    assert await catalogue(api) == before
    members = await api.call("GET", f"/v2/images/{image['id']}/members", as_=MEMBER_A)
    assert members.status == 403 or members.json["members"] == []  # not shared: no members at all


@given(document=st.dictionaries(ODD_KEYS, JSON_VALUES, max_size=5))
async def test_odd_create_documents_are_refused_or_kept_whole(api: ApiClient, document: dict[str, Any]) -> None:
    """Wrong types and odd keys: a 4xx that creates nothing, or a 201 that loses nothing."""
    before = await catalogue(api)
    reply = await api.call("POST", "/v2/images", as_=MEMBER_A, data=json.dumps(document),
                           headers={"Content-Type": "application/json"})
    after = await catalogue(api)
    if reply.status != 201:
        assert_refused(reply)
        assert after == before
        return
    created = reply.json
    assert after == sorted(before + [created], key=lambda i: i["id"])
    for key, value in document.items():
        if key == "tags":
            assert sorted(created["tags"]) == sorted(set(value))
        else:
            assert created[key] == value, key


@given(document=JSON_VALUES, media=st.sampled_from([V21, V20]))
async def test_odd_patch_documents_never_fail_the_server(api: ApiClient, image: dict[str, Any], document: Any,
                                                         media: str) -> None:
    before = await catalogue(api)
    reply = await api.call("PATCH", f"/v2/images/{image['id']}", as_=MEMBER_A, data=json.dumps(document),
                           headers={"Content-Type": media})
    if reply.status == 200:
        return  # e.g. an empty change list
    assert_refused(reply)
    assert await catalogue(api) == before


async def test_min_ram_and_min_disk_fit_a_32_bit_integer(api: ApiClient, image: dict[str, Any]) -> None:
    """The columns are INTEGER: 32 bits on PostgreSQL. 2**31 - 1 is kept, 2**31 refused."""
    for name in ("min_ram", "min_disk"):
        before = await catalogue(api)
        reply = await api.call("POST", "/v2/images", as_=MEMBER_A, json_body={"name": "x", name: 2**31})
        assert_refused(reply, 400)
        reply = await api.patch(image["id"], [{"op": "replace", "path": f"/{name}", "value": 2**31}])
        assert_refused(reply, 400)
        assert str(2**31 - 1) in reply.error["message"]
        assert await catalogue(api) == before
        reply = await api.patch(image["id"], [{"op": "replace", "path": f"/{name}", "value": 2**31 - 1}])
        assert reply.status == 200 and reply.json[name] == 2**31 - 1


# -- the request target --------------------------------------------------------------------------

@given(key=QUERY_KEYS, before_text=_SAFE_TEXT, escape=BAD_ESCAPES, after_text=_SAFE_TEXT, in_key=st.booleans())
@example(key="name", before_text="", escape="%FF", after_text="", in_key=False)  # Glance: 400
async def test_query_strings_that_are_not_utf8_are_refused(api: ApiClient, key: str, before_text: str, escape: str,
                                                           after_text: str, in_key: bool) -> None:
    value = _quote(before_text) + escape + _quote(after_text)
    query = f"{value}=x" if in_key else f"{key}={value}"
    before = await catalogue(api)
    reply = await raw_call(api, "GET", f"/v2/images?{query}")
    assert_refused(reply, 400)
    assert "query string" in reply.error["message"]
    assert await catalogue(api) == before


@given(key=st.sampled_from(["size_min", "size_max", "virtual_size_min", "virtual_size_max", "min_ram_min",
                            "min_disk_max", "size", "virtual_size", "min_ram", "min_disk"]),
       sign=st.sampled_from(["", "-"]),
       digits=st.one_of(_digits(20, 4000), st.integers((1 << 63) + 1, 10**19).map(str)))
@example(key="size_min", sign="", digits="9" * 30)
async def test_numeric_filters_out_of_the_columns_range_are_refused(api: ApiClient, key: str, sign: str,
                                                                    digits: str) -> None:
    reply = await raw_call(api, "GET", f"/v2/images?{key}={sign}{digits}")
    assert_refused(reply, 400)


@given(key=QUERY_KEYS, value=st.text(st.characters(codec="utf-8"), max_size=30))
async def test_any_utf8_query_value_never_fails_the_server(api: ApiClient, key: str, value: str) -> None:
    before = await catalogue(api)
    reply = await api.call("GET", "/v2/images", as_=MEMBER_A, params={key: value})
    if reply.status != 200:
        assert_refused(reply, 400)
    assert await catalogue(api) == before


@given(segment=st.one_of(st.builds(lambda a, e, b: _quote(a) + e + _quote(b), _SAFE_TEXT, BAD_ESCAPES, _SAFE_TEXT)),
       route=st.sampled_from(["tags/{}", "members/{}", "{}"]), method=st.sampled_from(["PUT", "GET", "DELETE"]))
async def test_paths_that_are_not_utf8_are_refused(api: ApiClient, image: dict[str, Any], segment: str, route: str,
                                                   method: str) -> None:
    path = f"/v2/images/{image['id']}/" + route.format(segment) if route != "{}" else f"/v2/images/{segment}"
    before = await catalogue(api)
    reply = await raw_call(api, method, path)
    assert_refused(reply, 400)
    assert "request path" in reply.error["message"]
    assert await catalogue(api) == before


# -- headers --------------------------------------------------------------------------------------

# Python's int() refuses more than 4300 digits: the long ones must never reach it.
RANGE_NUMBERS = st.one_of(st.just(""), st.integers(0, 5000).map(str), _digits(19, 5000),
                          st.sampled_from(["9" * 4301, "1" * 6000, "0" * 300 + "7", "\u0661\u0662", " 1", "-1", "1.5",
                                           "0x10", "+3"]))


@given(first=RANGE_NUMBERS, last=RANGE_NUMBERS, unit=st.sampled_from(["bytes=", "bytes =", "items=", "bytes="]),
       legacy=st.booleans())
@example(first="9" * 5000, last="", unit="bytes=", legacy=False)
@example(first="", last="9" * 5000, unit="bytes=", legacy=False)
async def test_any_range_is_served_or_refused_never_a_500(api: ApiClient, active_image: dict[str, Any], first: str,
                                                          last: str, unit: str, legacy: bool) -> None:
    if legacy:
        headers = {"Content-Range": f"bytes {first}-{last}/*"}
    else:
        headers = {"Range": f"{unit}{first}-{last}"}
    reply = await api.call("GET", f"/v2/images/{active_image['id']}/file", as_=MEMBER_A, headers=headers)
    if reply.status == 200:
        assert reply.body == DATA
    elif reply.status == 206:
        start, end = reply.headers["Content-Range"].removeprefix("bytes ").split("/")[0].split("-")
        assert reply.body == DATA[int(start):int(end) + 1] and reply.body
    else:
        assert_refused(reply, 400, 416)
        if reply.status == 416:
            assert reply.headers["Content-Range"] == f"bytes */{len(DATA)}"


SIZE_VALUES = st.one_of(_digits(20, 5000), st.builds(lambda d: "-" + d, _digits(1, 30)),
                        st.integers(1 << 63, 10**19).map(str),
                        st.sampled_from(["", " ", "ten", "1e3", "0x10", "\u0663", "4\u00a0", "+4", "4.0", "٣"]))


@given(size=SIZE_VALUES, with_type=st.booleans())
async def test_bad_upload_headers_are_refused_and_store_nothing(api: ApiClient, image: dict[str, Any], size: str,
                                                                with_type: bool) -> None:
    headers = {"x-openstack-image-size": size}
    if with_type:
        headers.update(OCTET)
    before = await catalogue(api)
    async with api.session.put(f"{api.base}/v2/images/{image['id']}/file", data=b"abcd",
                               headers={"Accept": "application/json", **MEMBER_A, **headers},
                               skip_auto_headers=["Content-Type"]) as response:
        reply = Reply(response.status, response.headers, await response.read())
    assert_refused(reply, 400 if with_type else 415)
    assert await catalogue(api) == before
    store = api.config.data_dir / "images" / "fs"
    assert not (store / image["id"]).exists()


async def test_upload_without_content_type_is_415(api: ApiClient, image: dict[str, Any]) -> None:
    async with api.session.put(f"{api.base}/v2/images/{image['id']}/file", data=b"abcd",
                               headers={"Accept": "application/json", **MEMBER_A},
                               skip_auto_headers=["Content-Type"]) as response:
        reply = Reply(response.status, response.headers, await response.read())
    assert_refused(reply, 415)
    shown = await api.call("GET", f"/v2/images/{image['id']}", as_=MEMBER_A)
    assert shown.json["status"] == "queued" and shown.json["size"] is None


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        received = b""
        while piece := sock.recv(65536):
            received += piece
        return received


@given(name=st.sampled_from(["X-Project-Id", "X-Tenant-Id", "X-User-Id", "X-Roles"]),
       before_text=_SAFE_TEXT, raw=st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xe2\x82", b"\x80\x81"]),
       after_text=_SAFE_TEXT)
async def test_identity_headers_that_are_not_utf8_are_refused(api: ApiClient, name: str, before_text: str,
                                                              raw: bytes, after_text: str) -> None:
    port = int(api.base.rsplit(":", 1)[1])
    value = before_text.encode() + raw + after_text.encode()
    body = b'{"name": "x", "disk_format": "raw", "container_format": "bare"}'
    # X-Tenant-Id counts only without X-Project-Id.
    replaced = {name, "X-Project-Id"} if name == "X-Tenant-Id" else {name}
    identity = b"".join(f"{k}: {v}\r\n".encode() for k, v in MEMBER_A.items() if k not in replaced)
    request = (b"POST /v2/images HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\nConnection: close\r\n" + identity
               + name.encode() + b": " + value + b"\r\nContent-Type: application/json\r\n"
               + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    before = await catalogue(api)
    answer = await asyncio.get_running_loop().run_in_executor(None, _raw_exchange, port, request)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:300]
    error = json.loads(payload)
    assert error["code"] == "400 Bad Request" and name in error["message"]
    assert await catalogue(api) == before
