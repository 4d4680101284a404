"""Glance 33's default policies, role x route x visibility: the same questions asked of the real
Glance 33 and of streamd, with the same identities, must get the same status codes.

Both servers run as processes on loopback ports (Glance under uWSGI with Glance's own paste
pipeline and the identity headers Keystone's middleware would set; streamd in noauth mode). Each
(visibility, caller) pair gets fresh images with the same ids on both servers, owned by project
A, holding data, shared images shared with project B (accepted). Callers: a member and a reader
of the owner project, a member of the image's member project, a member of an unrelated project,
an admin, and a caller with only the service role.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from conftest import ADMIN, MEMBER_A, MEMBER_B, MEMBER_C, PROJECT_A, PROJECT_B, READER_A, ROOT, start_daemon, stop_daemon


def _bench_servers() -> Any:
    spec = importlib.util.spec_from_file_location("streamd_bench_servers_policy", ROOT / "bench" / "servers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SERVICE = {"X-Project-Id": "d" * 32, "X-User-Id": "service-user", "X-Roles": "service"}
CALLERS = {"owner": MEMBER_A, "owner-reader": READER_A, "image-member": MEMBER_B, "other": MEMBER_C,
           "admin": ADMIN, "service": SERVICE}
VISIBILITIES = ("private", "shared", "community", "public")
PATCH = "application/openstack-images-v2.1-json-patch"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    venv = ROOT / ".venv-glance"
    if not (venv / "bin" / "uwsgi").exists():
        pytest.fail(f"{venv} is missing: run scripts/install.sh --test (it makes the Glance 33 venv)")
    base = tmp_path_factory.mktemp("policy-parity")
    (base / "streamd").mkdir()
    daemon = start_daemon(base / "streamd")
    try:
        with _bench_servers().Glance(base / "glance", venv) as glance:
            _wait_until_steady(glance.url)
            yield {"glance": glance.url, "streamd": daemon.url}
    finally:
        stop_daemon(daemon)


def _wait_until_steady(url: str) -> None:
    """uWSGI's workers may drop the first requests while they load: wait for several answers in a row."""
    answered = 0
    for _ in range(200):
        try:
            requests.get(url + "/v2/images", headers=ADMIN, timeout=10)
            answered += 1
            if answered >= 6:
                return
        except requests.ConnectionError:
            answered = 0
    raise AssertionError(f"{url} does not answer steadily")


def _call(url: str, method: str, path: str, who: dict[str, str], body: Any = None,
          content_type: str = "application/json", data: bytes | None = None) -> int:
    headers = {"Accept": "application/json", **who}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    elif data is not None:
        headers["Content-Type"] = content_type
    for _ in range(3):
        try:
            return requests.request(method, url + path, headers=headers, data=data, timeout=30).status_code
        except requests.ConnectionError:  # uWSGI recycling a worker: ask again
            continue
    raise AssertionError(f"{method} {url}{path}: no answer")


def _make_image(url: str, image_id: str, visibility: str) -> None:
    created = _call(url, "POST", "/v2/images", ADMIN, {"id": image_id, "name": "m", "owner": PROJECT_A,
                                                     "visibility": visibility, "disk_format": "raw",
                                                     "container_format": "bare"})
    assert created == 201, (url, created)
    assert _call(url, "PUT", f"/v2/images/{image_id}/file", ADMIN, data=b"policy" * 100,
                 content_type="application/octet-stream") == 204
    if visibility == "shared":
        assert _call(url, "POST", f"/v2/images/{image_id}/members", ADMIN, {"member": PROJECT_B}) == 200
        assert _call(url, "PUT", f"/v2/images/{image_id}/members/{PROJECT_B}", MEMBER_B,
                     {"status": "accepted"}) == 200


def _image_questions(url: str, image_id: str, who: dict[str, str]) -> dict[str, int]:
    """What ``who`` gets for each image route, in an order where each change is seen by the next."""
    path = f"/v2/images/{image_id}"
    answers = {
        "get_image": _call(url, "GET", path, who),
        "download_image": _call(url, "GET", path + "/file", who),
        "get_members": _call(url, "GET", path + "/members", who),
        "get_member": _call(url, "GET", f"{path}/members/{PROJECT_B}", who),
        "modify_member": _call(url, "PUT", f"{path}/members/{PROJECT_B}", who, {"status": "accepted"}),
        "add_member": _call(url, "POST", path + "/members", who, {"member": "e" * 32}),
        "delete_member": _call(url, "DELETE", f"{path}/members/{'e' * 32}", who),
        "modify_image (name)": _call(url, "PATCH", path, who, [{"op": "replace", "path": "/name", "value": "n"}],
                                     PATCH),
        "modify_image (property)": _call(url, "PATCH", path, who,
                                         [{"op": "add", "path": "/x_policy", "value": "1"}], PATCH),
        "modify_image (tag)": _call(url, "PUT", path + "/tags/t1", who),
        "image tasks": _call(url, "GET", path + "/tasks", who),
        "upload_image": _call(url, "PUT", path + "/file", who, data=b"x",
                              content_type="application/octet-stream"),
        "deactivate": _call(url, "POST", path + "/actions/deactivate", who),
        "download_image (deactivated)": _call(url, "GET", path + "/file", who),
        "reactivate": _call(url, "POST", path + "/actions/reactivate", who),
        "copy_image": _call(url, "POST", path + "/import", who, {"method": {"name": "copy-image"},
                                                               "stores": ["fs"]}),
        "delete_image_location": _call(url, "DELETE", f"/v2/stores/fs/{image_id}", who),
        "communitize_image": _call(url, "PATCH", path, who,
                                   [{"op": "replace", "path": "/visibility", "value": "community"}], PATCH),
        "publicize_image": _call(url, "PATCH", path, who,
                                 [{"op": "replace", "path": "/visibility", "value": "public"}], PATCH),
        "delete_image": _call(url, "DELETE", path, who),
    }
    return answers


def _global_questions(url: str, who: dict[str, str]) -> dict[str, int]:
    project = who["X-Project-Id"]
    answers = {
        "get_images": _call(url, "GET", "/v2/images", who),
        "add_image (own project)": _call(url, "POST", "/v2/images", who, {"name": "own"}),
        "add_image (other owner)": _call(url, "POST", "/v2/images", who, {"name": "theirs", "owner": "9" * 32}),
        "add_image (public)": _call(url, "POST", "/v2/images", who, {"name": "pub", "visibility": "public"}),
        "add_image (community)": _call(url, "POST", "/v2/images", who, {"name": "com", "visibility": "community",
                                                                        "owner": project}),
        "tasks_api_access": _call(url, "GET", "/v2/tasks", who),
        "stores_info_detail": _call(url, "GET", "/v2/info/stores/detail", who),
        "cache_list": _call(url, "GET", "/v2/cache", who),
        "cache_prune": _call(url, "POST", "/v2/cache/prune", who),
    }
    return answers


def test_every_caller_gets_glance_answers_on_every_route(servers: dict[str, str]) -> None:
    answers: dict[str, dict[tuple[str, str, str], int]] = {"glance": {}, "streamd": {}}
    for visibility in VISIBILITIES:
        for caller, who in CALLERS.items():
            image_id = str(uuid.uuid4())
            for name, url in servers.items():
                _make_image(url, image_id, visibility)
                for question, status in _image_questions(url, image_id, who).items():
                    answers[name][(visibility, caller, question)] = status
    for caller, who in CALLERS.items():
        for name, url in servers.items():
            for question, status in _global_questions(url, who).items():
                answers[name][("-", caller, question)] = status
    differences = [f"{key}: glance {status}, streamd {answers['streamd'][key]}"
                   for key, status in answers["glance"].items() if answers["streamd"][key] != status]
    assert not differences, "\n".join(differences)
    # The matrix asks real questions: each caller is refused something and allowed something.
    for caller in CALLERS:
        statuses = {s for (_, c, _), s in answers["glance"].items() if c == caller}
        assert statuses & {200, 201, 204} and statuses & {403, 404}, (caller, statuses)
