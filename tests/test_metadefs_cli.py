"""The real ``openstack`` CLI (python-openstackclient) on every ``openstack image metadef ...`` command
against a streamd daemon and against real Glance 33: the same commands must print the same.

openstackclient runs without Keystone (its ``none`` auth plugin, the image endpoint given); both
servers take the caller's identity from their noauth defaults. Each command's exit code, what it
printed on stdout (JSON, timestamps masked) and on stderr (the server's URL masked) are compared.
A second test reads streamd's answers on their own, so a change on both sides cannot pass unseen.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import ROOT
from test_glance_parity import glance_and_streamd

OPENSTACK_CLI = ROOT / ".venv" / "bin" / "openstack"
_TIMES = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_DROPPED = re.compile(r"Connection aborted|Connection reset by peer|Remote end closed connection")

# Every `openstack image metadef` subcommand of python-openstackclient 10.5, with its options; "NS" is
# replaced by the namespace of the run. Show/list steps print JSON (-f json) so they compare exactly.
SCHEMA = json.dumps({"type": "integer", "minimum": 1, "maximum": 64, "description": "cores"})
STEPS: list[list[str]] = [
    ["namespace", "create", "--display-name", "CLI namespace", "--description", "made by openstack",
     "--public", "--protected", "NS", "-f", "json"],
    ["namespace", "create", "NS"],                                     # 409
    ["namespace", "show", "NS", "-f", "json"],
    ["namespace", "show", "NS-missing"],                               # 404
    ["namespace", "list", "--visibility", "public", "-f", "json"],
    ["namespace", "list", "--visibility", "private", "-f", "json"],
    # A PUT of the whole namespace: what the command leaves out goes back to its default (unprotected).
    ["namespace", "set", "--display-name", "Renamed", "--description", "again", "--private", "--protected", "NS"],
    ["namespace", "show", "NS", "-f", "json"],
    ["namespace", "delete", "NS"],                                     # 403 protected
    ["namespace", "set", "--unprotected", "NS"],
    ["namespace", "show", "NS", "-f", "json"],
    ["namespace", "set", "--protected", "--public", "--display-name", "Again", "NS"],
    ["namespace", "show", "NS", "-f", "json"],
    ["namespace", "set", "--unprotected", "NS"],
    # objects
    ["object", "create", "--namespace", "NS", "obj1", "-f", "json"],
    ["object", "create", "--namespace", "NS", "obj1"],                 # 409
    ["object", "create", "--namespace", "NS", "obj2", "-f", "json"],
    ["object", "list", "NS", "-f", "json"],
    ["object", "show", "NS", "obj1", "-f", "json"],
    ["object", "show", "NS", "nosuch"],                                # 404
    ["object", "update", "--name", "obj1-renamed", "NS", "obj1"],
    ["object", "show", "NS", "obj1-renamed", "-f", "json"],
    ["object", "property", "show", "NS", "obj1-renamed", "nosuch"],
    ["object", "delete", "NS", "obj2"],
    ["object", "delete", "NS", "obj2"],                                # 404
    ["object", "list", "NS", "-f", "json"],
    # properties
    ["property", "create", "--name", "cores", "--title", "Cores", "--type", "integer", "--schema", SCHEMA, "NS",
     "-f", "json"],
    ["property", "create", "--name", "cores", "--title", "Cores", "--type", "integer", "--schema", SCHEMA, "NS"],
    ["property", "create", "--name", "mode", "--title", "Mode", "--type", "string",
     "--schema", json.dumps({"enum": ["a", "b"], "default": "a"}), "NS", "-f", "json"],
    ["property", "create", "--name", "bad", "--title", "Bad", "--type", "string", "--schema", "not json", "NS"],
    ["property", "list", "NS", "-f", "json"],
    ["property", "show", "NS", "cores", "-f", "json"],
    ["property", "show", "NS", "nosuch"],                              # 404
    ["property", "set", "--title", "CPU cores", "NS", "cores"],
    ["property", "show", "NS", "cores", "-f", "json"],
    ["property", "set", "--name", "vcpus", "--type", "integer", "--schema", json.dumps({"minimum": 2}), "NS",
     "cores"],
    ["property", "show", "NS", "vcpus", "-f", "json"],
    ["property", "show", "NS", "cores"],                               # 404 after the rename
    ["property", "delete", "NS", "mode"],
    ["property", "delete", "NS", "mode"],                              # 404
    ["property", "list", "NS", "-f", "json"],
    # resource types and their associations
    ["resource", "type", "list", "-f", "json"],
    ["resource", "type", "association", "create", "--properties-target", "image", "NS", "OS::Glance::Image",
     "-f", "json"],
    ["resource", "type", "association", "create", "NS", "OS::Cinder::Volume", "-f", "json"],
    ["resource", "type", "association", "create", "NS", "OS::Glance::Image"],           # 409
    ["resource", "type", "association", "list", "NS", "-f", "json"],
    ["namespace", "list", "--resource-types", "OS::Cinder::Volume", "-f", "json"],
    ["resource", "type", "association", "delete", "NS", "OS::Cinder::Volume"],
    ["resource", "type", "association", "delete", "NS", "OS::Cinder::Volume"],          # 404
    ["resource", "type", "association", "list", "NS", "-f", "json"],
    ["resource", "type", "list", "-f", "json"],
    # Tags are compared on streamd alone (test_openstack_metadef_commands_on_streamd): `namespace set
    # --tag` sends one request per tag and swallows a failure, so a reset by Glance's uWSGI cannot be
    # told from a refusal there.
    ["namespace", "unset", "--all-tags", "NS"],
    ["namespace", "show", "NS", "-f", "json"],
    # the namespace with what it holds
    ["namespace", "delete", "NS"],
    ["namespace", "show", "NS"],                                       # 404
    ["namespace", "delete", "NS"],                                     # 404
    ["object", "list", "NS"],                                          # 404
]


def openstack(url: str, args: list[str]) -> tuple[tuple[int, str, str], bool]:
    """One ``openstack image metadef`` command: (exit code, stdout, stderr) with the URL and times
    masked, and whether it was run again (uWSGI's Glance workers may reset a connection while warming)."""
    for attempt in range(8):
        done = subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" <&-', str(OPENSTACK_CLI), "--os-auth-type", "none",
                               "--os-endpoint", url, "--os-image-api-version", "2", "image", "metadef", *args],
                              capture_output=True, text=True, timeout=60)
        if not _DROPPED.search(done.stderr):
            break
        time.sleep(0.5)
    return (done.returncode, _TIMES.sub("<time>", done.stdout).strip(),
            done.stderr.replace(url, "URL").strip()), attempt > 0


def _steps(namespace: str) -> list[list[str]]:
    return [[namespace if a == "NS" else namespace + "-missing" if a == "NS-missing" else a for a in step]
            for step in STEPS]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # Both start with no definitions loaded: the listings show only what the commands made.
    with glance_and_streamd(tmp_path_factory.mktemp("metadefs-cli"),
                            extra_config="metadefs_initial_load = false\n") as both:
        yield both


class _GlanceKeptResetting(Exception):
    """uWSGI cut one of Glance's connections on every retry: Glance's state after it is unknown."""


def _run_all(url: str, steps: list[list[str]]) -> list[tuple[tuple[int, str, str], bool]]:
    return [openstack(url, step) for step in steps]


def _compare(servers: dict[str, str], namespace: str) -> int:
    # The two servers share nothing: each side runs the whole sequence in order in a thread of its own,
    # both at once (each CLI run is mostly the interpreter starting), then the answers are compared step by step.
    steps = _steps(namespace)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ours_f, theirs_f = (pool.submit(_run_all, servers[side], steps) for side in ("streamd", "glance"))
        our_runs, their_runs = ours_f.result(), theirs_f.result()
    compared = 0
    for step, (ours, _), (theirs, retried) in zip(steps, our_runs, their_runs, strict=True):
        if _DROPPED.search(theirs[2]):
            raise _GlanceKeptResetting(" ".join(step))
        if retried and theirs[0] != 0 and ours[0] == 0:
            continue  # the reset came after Glance had done it: the retry found it done (409/404)
        assert ours == theirs, " ".join(step)
        compared += 1
    return compared


def test_openstack_metadef_commands_print_what_glance_prints(servers: dict[str, str]) -> None:
    for attempt in range(3):
        try:
            compared = _compare(servers, f"OS::CLI::NS{attempt}")
            break
        except _GlanceKeptResetting:
            continue
    else:
        raise AssertionError("Glance's uWSGI kept resetting connections in three runs")
    assert compared >= len(STEPS) * 2 // 3, f"only {compared} steps compared"


def _json(url: str, *args: str) -> Any:
    (rc, out, err), _ = openstack(url, [*args, "-f", "json"])
    assert rc == 0, err
    return json.loads(out)


def test_openstack_metadef_commands_on_streamd(servers: dict[str, str]) -> None:
    url, ns = servers["streamd"], "OS::CLI::Own"
    made = _json(url, "namespace", "create", "--display-name", "Own", "--public", ns)
    assert (made["namespace"], made["display_name"], made["visibility"], made["protected"]) == (ns, "Own", "public",
                                                                                                False)
    assert ns in [n["namespace"] for n in _json(url, "namespace", "list")]
    _json(url, "object", "create", "--namespace", ns, "o")
    assert [o["name"] for o in _json(url, "object", "list", ns)] == ["o"]
    prop = _json(url, "property", "create", "--name", "p", "--title", "P", "--type", "integer", "--schema",
                 SCHEMA, ns)
    assert (prop["name"], prop["type"], prop["minimum"], prop["maximum"]) == ("p", "integer", 1, 64)
    (rc, _, _), _ = openstack(url, ["namespace", "set", "--private", ns])
    assert rc == 0
    assert _json(url, "namespace", "show", ns)["visibility"] == "private"
    # Tags: set adds (one POST each), unset removes one, --all-tags the rest.
    (rc, _, err), _ = openstack(url, ["namespace", "set", "--tag", "t1", "--tag", "t2", "--tag", "t3", ns])
    assert rc == 0, err
    assert sorted(t["name"] for t in _json(url, "namespace", "show", ns)["tags"]) == ["t1", "t2", "t3"]
    (rc, _, err), _ = openstack(url, ["namespace", "unset", "--tag", "t2", ns])
    assert rc == 0, err
    assert sorted(t["name"] for t in _json(url, "namespace", "show", ns)["tags"]) == ["t1", "t3"]
    (rc, _, err), _ = openstack(url, ["namespace", "unset", "--tag", "nosuch", ns])
    assert rc == 1 and "tag unset failed for tag nosuch" in err, err
    (rc, _, err), _ = openstack(url, ["namespace", "unset", "--all-tags", ns])
    assert rc == 0, err
    assert _json(url, "namespace", "show", ns)["tags"] == []
    (rc, _, err), _ = openstack(url, ["namespace", "delete", ns])
    assert rc == 0, err
    (rc, _, err), _ = openstack(url, ["namespace", "show", ns])
    assert rc == 1 and "404" in err, err
    assert ns not in [n["namespace"] for n in _json(url, "namespace", "list")]
