"""Who may see, list, change and delete an image: visibility x caller, with Glance's default
(secure RBAC) policies.

An image the caller may not see is 404 for every call (visibility is never revealed); an image the
caller sees but may not change is 403; a reader writes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import ADMIN, MEMBER_A, MEMBER_B, PROJECT_A, PROJECT_B, READER_A, ApiClient, both_databases

pytestmark = both_databases

CALLERS = {"owner": MEMBER_A, "other": MEMBER_B, "reader": READER_A, "admin": ADMIN}

# visibility case -> caller -> (GET show, in the default list, PATCH name, DELETE)
OWNER = (200, True, 200, 204)
ADMIN_RIGHTS = (200, True, 200, 204)
READER = (200, True, 403, 403)
HIDDEN = (404, False, 404, 404)
EXPECTED: dict[str, dict[str, tuple[int, bool, int, int]]] = {
    "public": {"owner": OWNER, "other": (200, True, 403, 403), "reader": READER, "admin": ADMIN_RIGHTS},
    # Community images are listed by default only for their owner (the admin included).
    "community": {"owner": OWNER, "other": (200, False, 403, 403), "reader": READER,
                  "admin": (200, False, 200, 204)},
    "shared-accepted": {"owner": OWNER, "other": (200, True, 403, 403), "reader": READER, "admin": ADMIN_RIGHTS},
    # A pending (or rejected) consumer sees the image but does not list it by default.
    "shared-pending": {"owner": OWNER, "other": (200, False, 403, 403), "reader": READER, "admin": ADMIN_RIGHTS},
    "shared-not-member": {"owner": OWNER, "other": HIDDEN, "reader": READER, "admin": ADMIN_RIGHTS},
    "private": {"owner": OWNER, "other": HIDDEN, "reader": READER, "admin": ADMIN_RIGHTS},
}


async def make_image(api: ApiClient, case: str) -> dict[str, Any]:
    """An image owned by project A in the given visibility case."""
    visibility = case.split("-")[0]
    image = await api.create(as_=ADMIN, name="original", owner=PROJECT_A, visibility=visibility)
    assert image["owner"] == PROJECT_A and image["visibility"] == visibility
    if case.startswith("shared-") and case != "shared-not-member":
        path = f"/v2/images/{image['id']}/members"
        assert (await api.call("POST", path, as_=MEMBER_A, json_body={"member": PROJECT_B})).status == 200
        if case == "shared-accepted":
            reply = await api.call("PUT", f"{path}/{PROJECT_B}", as_=MEMBER_B, json_body={"status": "accepted"})
            assert reply.status == 200
    return image


async def observe(api: ApiClient, case: str, caller: str) -> tuple[int, bool, int, int]:
    """What ``caller`` gets for GET, the default list, PATCH name and DELETE on a fresh image."""
    who = CALLERS[caller]
    image = await make_image(api, case)
    path = f"/v2/images/{image['id']}"
    shown = await api.call("GET", path, as_=who)
    if shown.status == 200:
        assert shown.json == image
    else:
        assert shown.error["code"] == shown.status and "original" not in shown.body.decode()
    listed = image["id"] in await api.list_ids(as_=who)
    patched = await api.patch(image["id"], [{"op": "replace", "path": "/name", "value": f"by-{caller}"}], as_=who)
    expected_name = f"by-{caller}" if patched.status == 200 else "original"
    assert (await api.call("GET", path, as_=ADMIN)).json["name"] == expected_name, (case, caller)
    deleted = await api.call("DELETE", path, as_=who)
    after = await api.call("GET", path, as_=ADMIN)
    assert after.status == (404 if deleted.status == 204 else 200), (case, caller)
    return shown.status, listed, patched.status, deleted.status


@pytest.mark.parametrize("case", list(EXPECTED))
async def test_access(api: ApiClient, case: str) -> None:
    observed = {caller: await observe(api, case, caller) for caller in CALLERS}
    # Compare the whole row at once, so that one failure shows every caller's outcome.
    assert observed == EXPECTED[case]


async def test_unlisted_images_are_listed_when_asked_for(api: ApiClient) -> None:
    community = await make_image(api, "community")
    pending = await make_image(api, "shared-pending")
    assert community["id"] in await api.list_ids({"visibility": "community"}, as_=MEMBER_B)
    assert community["id"] in await api.list_ids({"visibility": "community"}, as_=ADMIN)
    assert pending["id"] in await api.list_ids({"member_status": "pending"}, as_=MEMBER_B)
    assert pending["id"] in await api.list_ids({"member_status": "all"}, as_=MEMBER_B)
    assert pending["id"] not in await api.list_ids({"member_status": "rejected"}, as_=MEMBER_B)


async def test_reader_writes_nothing(api: ApiClient) -> None:
    image = await make_image(api, "shared-accepted")
    path = f"/v2/images/{image['id']}"
    assert (await api.call("POST", "/v2/images", as_=READER_A, json_body={"name": "x"})).status == 403
    assert (await api.patch(image["id"], [{"op": "add", "path": "/colour", "value": "x"}], as_=READER_A)).status == 403
    assert (await api.call("PUT", f"{path}/tags/t", as_=READER_A)).status == 403
    assert (await api.call("POST", f"{path}/members", as_=READER_A,
                           json_body={"member": "c" * 32})).status == 403
    assert (await api.call("DELETE", f"{path}/members/{PROJECT_B}", as_=READER_A)).status == 403
    assert (await api.call("POST", f"{path}/actions/deactivate", as_=READER_A)).status == 403
    assert (await api.call("DELETE", path, as_=READER_A)).status == 403
    # ... but reads everything its project may.
    assert (await api.call("GET", f"{path}/members", as_=READER_A)).status == 200
    assert (await api.call("GET", path, as_=ADMIN)).json == image
