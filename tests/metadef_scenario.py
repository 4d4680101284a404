"""One sequence of metadefs calls, run against streamd and against real Glance 33 (test_metadefs_parity.py).

Each step is (who, method, path, body, extra headers). ``run(url)`` plays the steps in order and
returns, for each, the status, the headers that carry meaning, and the JSON body with its
timestamps checked for Glance's format and then masked (two servers never share a clock).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

P1 = "00000000000000000000000000000001"  # the project of the bench Glance's default admin
P2 = "00000000000000000000000000000bbb"
IDENTITIES = {
    "admin": (P1, "admin,member,reader"),
    "member": (P1, "member,reader"),
    "reader": (P1, "reader"),
    "other": (P2, "member,reader"),
    "other_reader": (P2, "reader"),
    "nobody": (P1, "someone"),
}
_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
NS = "/v2/metadefs/namespaces"

Step = tuple[str, str, str, Any, dict[str, str]]

# Where Glance 33 answers 500 (a database error or int() escaping), streamd answers what the
# client got wrong; the parity test checks these steps against this table instead.
GLANCE_500: dict[int, int] = {}


_STEP_COUNT = [0]


def s(who: str, method: str, path: str, body: Any = None, *, glance_500: int | None = None, **headers: str) -> Step:
    if glance_500 is not None:
        GLANCE_500[_STEP_COUNT[0]] = glance_500
    _STEP_COUNT[0] += 1
    return (who, method, path, body, {k.replace("_", "-"): v for k, v in headers.items()})


PROPERTY = {"title": "Hypervisor", "type": "string", "enum": ["xen", "qemu", "kvm"],
            "description": "the hypervisor", "default": "kvm"}

STEPS: list[Step] = [
    # -- namespaces -----------------------------------------------------------------------------
    s("admin", "POST", NS, {"namespace": "sd-public", "display_name": "Public", "description": "Tempest",
                            "visibility": "public", "protected": True,
                            "resource_type_associations": [{"name": "Sd::Test", "prefix": "hw_",
                                                            "properties_target": "image"}],
                            "properties": {"cpu": {"title": "CPU", "type": "integer", "minimum": 1,
                                                   "maximum": 64}},
                            "objects": [{"name": "obj-a", "description": "an object", "required": ["ram"],
                                         "properties": {"ram": {"title": "RAM", "type": "integer"}}}],
                            "tags": [{"name": "tag-a"}, {"name": "tag-b"}]}),
    s("admin", "GET", NS + "/sd-public"),
    s("admin", "GET", NS + "/sd-public?resource_type=Sd::Test"),
    s("admin", "POST", NS, {"namespace": "sd-public"}),
    s("admin", "POST", NS, {"namespace": "sd-private", "visibility": "private"}),
    s("member", "POST", NS, {"namespace": "sd-member"}),
    s("other", "POST", NS, {"namespace": "sd-other"}),
    s("reader", "POST", NS, {"namespace": "sd-reader"}),
    s("admin", "POST", NS, {"namespace": "sd-p2", "owner": P2}),
    s("admin", "POST", NS, {"display_name": "no name"}),
    s("admin", "POST", NS, {"namespace": "x" * 81}),
    s("admin", "POST", NS, {"namespace": "sd-bad", "visibility": "shared"}),
    s("admin", "POST", NS, {"namespace": "sd-bad", "created_at": "2020-01-01T00:00:00Z"}),
    s("admin", "POST", NS, {"namespace": "sd-bad", "unknown": 1}),
    s("admin", "POST", NS, "not an object"),
    s("admin", "POST", NS, None),
    s("admin", "GET", NS + "/missing"),
    s("member", "GET", NS + "/sd-public"),
    s("member", "GET", NS + "/sd-private"),
    s("other", "GET", NS + "/sd-private"),
    s("other", "GET", NS + "/sd-p2"),
    s("other_reader", "GET", NS + "/sd-p2"),
    s("nobody", "GET", NS + "/sd-public"),
    s("admin", "GET", NS + "?resource_types=Sd::Test"),
    s("admin", "GET", NS + "?resource_types=Sd::Test,Nothing::Here"),
    s("admin", "GET", NS + "?visibility=private&sort_key=namespace&sort_dir=asc"),
    s("admin", "GET", NS + "?visibility=private&sort_key=namespace&sort_dir=asc&limit=1"),
    s("admin", "GET", NS + "?visibility=private&sort_key=namespace&sort_dir=asc&limit=1&marker=sd-p2"),
    s("admin", "GET", NS + "?visibility=shared"),
    s("admin", "GET", NS + "?sort_dir=up"),
    s("admin", "GET", NS + "?limit=-1"),
    s("admin", "GET", NS + "?limit=x", glance_500=400),
    s("admin", "GET", NS + "?marker=missing"),
    s("other", "GET", NS + "?visibility=private"),
    s("member", "GET", NS + "?visibility=private&sort_key=namespace&sort_dir=asc"),
    s("nobody", "GET", NS),
    # update: omitted optional fields fall back to create's defaults
    s("admin", "PUT", NS + "/sd-private", {"namespace": "sd-private", "description": "changed"}),
    s("admin", "PUT", NS + "/sd-private", {"namespace": "sd-private2", "visibility": "private"}),
    s("admin", "PUT", NS + "/sd-private2", {"namespace": "sd-public"}),
    s("admin", "PUT", NS + "/sd-private2", {"namespace": "sd-private2", "self": "x"}),
    s("admin", "PUT", NS + "/sd-missing", {"namespace": "sd-missing"}),
    s("member", "PUT", NS + "/sd-member", {"namespace": "sd-member", "description": "mine"}),
    s("other", "PUT", NS + "/sd-private2", {"namespace": "sd-private2"}),
    s("member", "PUT", NS + "/sd-public", {"namespace": "sd-public"}),
    # delete: protected, not permitted, invisible
    s("admin", "DELETE", NS + "/sd-public"),
    s("member", "DELETE", NS + "/sd-public"),
    s("other", "DELETE", NS + "/sd-private2"),
    s("admin", "DELETE", NS + "/sd-public/objects"),
    s("admin", "DELETE", NS + "/sd-public/tags"),
    s("admin", "DELETE", NS + "/sd-public/properties"),
    # -- objects --------------------------------------------------------------------------------
    s("admin", "POST", NS + "/sd-private2/objects", {"name": "obj-1", "description": "one", "required": ["p"],
                                                     "properties": {"p": PROPERTY}}),
    s("admin", "POST", NS + "/sd-private2/objects", {"name": "obj-2"}),
    s("admin", "POST", NS + "/sd-private2/objects", {"name": "obj-1"}),
    s("admin", "POST", NS + "/sd-private2/objects", {"description": "no name"}),
    s("admin", "POST", NS + "/sd-private2/objects", {"name": "obj-3", "schema": "x"}),
    s("admin", "POST", NS + "/sd-missing/objects", {"name": "obj-1"}),
    s("member", "POST", NS + "/sd-private2/objects", {"name": "obj-m"}),
    s("other", "POST", NS + "/sd-private2/objects", {"name": "obj-o"}),
    s("admin", "GET", NS + "/sd-private2/objects"),
    s("admin", "GET", NS + "/sd-private2/objects/obj-1"),
    s("admin", "GET", NS + "/sd-private2/objects/obj-9"),
    s("member", "GET", NS + "/sd-private2/objects/obj-1"),
    s("other", "GET", NS + "/sd-private2/objects/obj-1"),
    s("other", "GET", NS + "/sd-private2/objects"),
    s("admin", "PUT", NS + "/sd-private2/objects/obj-1", {"name": "obj-1b", "description": "renamed"}),
    s("admin", "PUT", NS + "/sd-private2/objects/obj-1b", {"name": "obj-2"}, glance_500=409),
    s("admin", "PUT", NS + "/sd-private2/objects/obj-9", {"name": "obj-9"}),
    s("member", "PUT", NS + "/sd-private2/objects/obj-2", {"name": "obj-2"}),
    s("admin", "GET", NS + "/sd-private2"),
    s("admin", "DELETE", NS + "/sd-private2/objects/obj-2"),
    s("admin", "DELETE", NS + "/sd-private2/objects/obj-2"),
    s("member", "DELETE", NS + "/sd-private2/objects/obj-1b"),
    # -- properties -----------------------------------------------------------------------------
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "hypervisor", **PROPERTY}),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "hypervisor", **PROPERTY}),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "cores", "title": "Cores", "type": "integer",
                                                        "minimum": 1, "readonly": False}),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "bad", "title": "Bad"}),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "bad", "title": "Bad", "type": "colour"}),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "arr", "title": "Arr", "type": "array",
                                                        "items": {"type": "string", "enum": ["a", "b"]},
                                                        "uniqueItems": True, "minItems": 1}),
    s("member", "POST", NS + "/sd-private2/properties", {"name": "m", "title": "M", "type": "string"}),
    s("admin", "GET", NS + "/sd-private2/properties"),
    s("admin", "GET", NS + "/sd-private2/properties/hypervisor"),
    s("admin", "GET", NS + "/sd-private2/properties/nothing"),
    s("reader", "GET", NS + "/sd-private2/properties/cores"),
    s("other", "GET", NS + "/sd-private2/properties/cores"),
    s("admin", "PUT", NS + "/sd-private2/properties/hypervisor", {"name": "hypervisor", "title": "HV",
                                                                  "type": "string"}),
    s("admin", "PUT", NS + "/sd-private2/properties/hypervisor", {"name": "hv", "title": "HV",
                                                                  "type": "string"}),
    s("admin", "PUT", NS + "/sd-private2/properties/hv", {"name": "cores", "title": "HV", "type": "string"},
      glance_500=409),
    s("admin", "PUT", NS + "/sd-private2/properties/nothing", {"name": "nothing", "title": "N",
                                                               "type": "string"}),
    s("admin", "DELETE", NS + "/sd-private2/properties/hv"),
    s("admin", "DELETE", NS + "/sd-private2/properties/hv"),
    s("member", "DELETE", NS + "/sd-private2/properties/cores"),
    # -- tags -----------------------------------------------------------------------------------
    s("admin", "POST", NS + "/sd-private2/tags/t-1"),
    s("admin", "POST", NS + "/sd-private2/tags/t-1"),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-2"}, {"name": "t-3"}]}),
    s("admin", "GET", NS + "/sd-private2/tags"),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-4"}]}, X_Openstack_Append="True"),
    s("admin", "GET", NS + "/sd-private2/tags"),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-4"}]}, X_Openstack_Append="True"),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-5"}, {"name": "t-5"}]}),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": []}),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": "t-6"}),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-6"}]}, X_Openstack_Append="false"),
    s("admin", "GET", NS + "/sd-private2/tags"),
    s("admin", "GET", NS + "/sd-private2/tags/t-6"),
    s("admin", "GET", NS + "/sd-private2/tags/t-1"),
    s("reader", "GET", NS + "/sd-private2/tags/t-6"),
    s("other", "GET", NS + "/sd-private2/tags/t-6"),
    s("member", "POST", NS + "/sd-private2/tags/t-m"),
    s("member", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-m"}]}),
    s("admin", "PUT", NS + "/sd-private2/tags/t-6", {"name": "t-7"}),
    s("admin", "PUT", NS + "/sd-private2/tags/t-9", {"name": "t-8"}),
    s("member", "PUT", NS + "/sd-private2/tags/t-7", {"name": "t-8"}),
    s("admin", "POST", NS + "/sd-private2/tags/t-8"),
    s("admin", "PUT", NS + "/sd-private2/tags/t-7", {"name": "t-8"}),
    s("admin", "DELETE", NS + "/sd-private2/tags/t-8"),
    s("admin", "DELETE", NS + "/sd-private2/tags/t-8"),
    s("member", "DELETE", NS + "/sd-private2/tags/t-7"),
    s("member", "DELETE", NS + "/sd-private2/tags"),
    s("admin", "GET", NS + "/sd-private2/tags?limit=1&sort_key=name&sort_dir=asc"),
    s("admin", "DELETE", NS + "/sd-private2/tags"),
    s("admin", "GET", NS + "/sd-private2/tags"),
    # -- resource types -------------------------------------------------------------------------
    s("reader", "GET", "/v2/metadefs/resource_types"),
    s("admin", "POST", NS + "/sd-private2/resource_types", {"name": "Sd::Test", "prefix": "sd_"}),
    s("admin", "POST", NS + "/sd-private2/resource_types", {"name": "Sd::Test"}),
    s("admin", "POST", NS + "/sd-private2/resource_types", {"name": "Sd::Other", "properties_target": "x"}),
    s("admin", "POST", NS + "/sd-private2/resource_types", {"prefix": "x"}),
    s("member", "POST", NS + "/sd-private2/resource_types", {"name": "Sd::Member"}),
    s("admin", "GET", NS + "/sd-private2/resource_types"),
    s("reader", "GET", NS + "/sd-private2/resource_types"),
    s("other", "GET", NS + "/sd-private2/resource_types"),
    s("admin", "GET", "/v2/metadefs/resource_types"),
    s("admin", "GET", NS + "?resource_types=Sd::Other&sort_key=namespace&sort_dir=asc"),
    s("admin", "GET", NS + "/sd-private2?resource_type=Sd::Test"),
    s("member", "DELETE", NS + "/sd-private2/resource_types/Sd::Other"),
    s("admin", "DELETE", NS + "/sd-private2/resource_types/Sd::Other"),
    s("admin", "DELETE", NS + "/sd-private2/resource_types/Sd::Other"),
    s("admin", "DELETE", NS + "/sd-private2/resource_types/Nothing::Here"),
    s("admin", "GET", NS + "/sd-private2/resource_types"),
    # -- edges ----------------------------------------------------------------------------------
    s("admin", "GET", NS + "/sd-missing/properties"),
    s("admin", "POST", NS + "/sd-missing/properties", {"name": "p", "title": "P", "type": "string"}),
    s("admin", "GET", NS + "/sd-missing/tags"),
    s("admin", "POST", NS + "/sd-missing/tags", {"tags": [{"name": "x"}]}),
    s("admin", "POST", NS + "/sd-missing/tags/x"),
    s("admin", "GET", NS + "/sd-missing/resource_types"),
    s("admin", "POST", NS + "/sd-missing/resource_types", {"name": "Sd::Test"}),
    s("admin", "DELETE", NS + "/sd-missing/tags"),
    s("admin", "GET", NS + "/sd-missing/objects"),
    s("admin", "GET", NS + "/sd-missing/objects/o"),
    s("nobody", "GET", NS + "/sd-private2/objects"),
    s("nobody", "GET", NS + "/sd-private2/tags/t-7"),
    s("nobody", "POST", NS + "/sd-private2/tags/x"),
    s("nobody", "GET", NS + "/sd-private2/resource_types"),
    s("nobody", "GET", "/v2/metadefs/resource_types"),
    s("reader", "GET", NS + "/sd-private2/objects"),
    s("reader", "GET", NS + "/sd-private2"),
    s("other", "GET", NS + "/sd-private2/properties"),
    s("admin", "GET", NS + "/sd-private2/tags?marker=nope"),
    s("admin", "GET", NS + "/sd-private2/tags?limit=0"),
    s("admin", "GET", NS + "/sd-private2/tags?sort_dir=sideways"),
    s("admin", "GET", NS + "/sd-private2/properties/cores?resource_type=Sd::Test"),
    s("admin", "GET", NS + "/sd-private2/properties/sd_cores?resource_type=Sd::Test"),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "dflt", "title": "D", "type": "boolean",
                                                        "default": False, "minimum": 1.5}),
    s("admin", "GET", NS + "/sd-private2/properties/dflt"),
    s("admin", "POST", NS + "/sd-private2/properties", {"name": "ints", "title": "I", "type": "integer",
                                                        "enum": [1, 2]}, glance_500=400),
    s("admin", "GET", NS + "?sort_key=colour", glance_500=400),
    s("admin", "GET", NS + "/sd-private2/tags?sort_key=colour", glance_500=400),
    s("admin", "PUT", NS + "/sd-private2/objects/obj-1b", {"description": "no name"}),
    s("admin", "PUT", NS + "/sd-private2/tags/t-7", {"title": "no name"}),
    s("admin", "PUT", NS + "/sd-private2/tags/t-7", None),
    s("admin", "POST", NS + "/sd-private2/tags", {"tags": [{"name": "t-9"}]}, X_Openstack_Append="maybe"),
    s("admin", "GET", NS + "/sd-private2/tags"),
    s("admin", "POST", NS, {"namespace": "sd-nested", "tags": [{"name": "a"}, {"name": "a"}]}),
    s("admin", "GET", NS + "/sd-nested"),
    s("admin", "POST", NS, {"namespace": "sd-nested", "properties": {"p": {"title": "no type"}}}),
    s("admin", "POST", NS, {"namespace": "sd-nested", "objects": [{"name": "o", "required": ["a", "a"]}]}),
    s("admin", "PUT", NS + "/sd-private2", {"namespace": "sd-private2", "owner": P2}),
    s("other", "GET", NS + "/sd-private2"),
    s("member", "GET", NS + "/sd-private2"),
    s("admin", "PUT", NS + "/sd-private2", {"namespace": "sd-private2"}),
    s("member", "GET", NS + "/sd-private2"),
    # -- cascades -------------------------------------------------------------------------------
    s("admin", "DELETE", NS + "/sd-private2/objects"),
    s("admin", "GET", NS + "/sd-private2/objects"),
    s("admin", "DELETE", NS + "/sd-private2/properties"),
    s("admin", "GET", NS + "/sd-private2/properties"),
    s("admin", "GET", NS + "/sd-private2"),
    s("admin", "PUT", NS + "/sd-public", {"namespace": "sd-public", "visibility": "public", "protected": False}),
    s("admin", "DELETE", NS + "/sd-public"),
    s("admin", "GET", NS + "/sd-public"),
    s("admin", "GET", NS + "/sd-public/objects/obj-a"),
    s("admin", "DELETE", NS + "/sd-private2"),
    s("admin", "DELETE", NS + "/sd-member"),
    s("admin", "DELETE", NS + "/sd-other"),
    s("admin", "DELETE", NS + "/sd-p2"),
    s("admin", "GET", NS + "?resource_types=Sd::Test"),
]

_KEPT_HEADERS = ("Content-Type", "Location")


def mask(document: Any) -> Any:
    """Timestamps (checked for Glance's format) become "<time>"."""
    if isinstance(document, dict):
        out = {}
        for key, value in document.items():
            if key in ("created_at", "updated_at") and isinstance(value, str):
                assert _TIME.match(value), f"{key} is not in Glance's format: {value!r}"
                out[key] = "<time>"
            else:
                out[key] = mask(value)
        return out
    if isinstance(document, list):
        return [mask(v) for v in document]
    return document


def call(url: str, step: Step) -> tuple[int, dict[str, str], Any]:
    who, method, path, body, extra = step
    project, roles = IDENTITIES[who]
    request = urllib.request.Request(url + path, method=method, headers={
        "X-Project-Id": project, "X-User-Id": f"user-{who}", "X-Roles": roles,
        "X-Identity-Status": "Confirmed", "Accept": "application/json", **extra})
    if body is not None:
        request.data = json.dumps(body).encode()
        request.add_header("Content-Type", "application/json")
    elif method in ("POST", "PUT"):
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        status, headers, raw = err.code, err.headers, err.read()
    kept = {k: headers[k] for k in _KEPT_HEADERS if k in headers and (status < 400 or k != "Location")}
    if kept.get("Location", "").startswith(url):
        kept["Location"] = kept["Location"][len(url):]
    kept["Content-Type"] = kept.get("Content-Type", "").split(";")[0]
    if status == 204:
        kept.pop("Content-Type")  # Glance's 204s say text/html; there is no body to type
    if not kept.get("Content-Type", "").endswith("json"):
        return status, kept, raw.decode("utf-8", "replace") or None
    return status, kept, mask(json.loads(raw))


def run(url: str) -> list[tuple[int, dict[str, str], Any]]:
    return [call(url, step) for step in STEPS]
