"""The runner (scripts/test.sh) provides a real single-node Ceph cluster via scripts/ceph-dev.sh.

These check that the cluster is there and usable from the venv: Debian's ``rados``/``rbd``
bindings import (scripts/install.sh --test links them in), the exported variables point at
the cluster, and an RBD image in ``$CEPH_POOL`` can be written sparsely, read back, diffed
and removed. They fail, rather than skip, when any of that is missing: the RBD store tests
would otherwise silently not run.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

HINT = "run the suite with scripts/test.sh, which starts Ceph via scripts/ceph-dev.sh"
VARS = ("CEPH_CONF", "CEPH_ADMIN_KEYRING", "CEPH_ID", "CEPH_POOL", "CEPH_MON_HOST",
        "STREAMD_TEST_CEPH_DIR")
MiB = 1 << 20


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: {HINT}")
    return value


def _bindings() -> tuple[Any, Any]:
    try:
        import rados
        import rbd
    except ImportError as e:
        pytest.fail(f"cannot import Ceph's Python bindings ({e}): run scripts/install.sh --test, "
                    "which links Debian's python3-rados/python3-rbd into .venv "
                    "(scripts/link-ceph-bindings.sh)")
    return rados, rbd


@pytest.fixture
def cluster() -> Iterator[Any]:
    rados, _ = _bindings()
    conn = rados.Rados(conffile=_env("CEPH_CONF"), rados_id=_env("CEPH_ID"))
    conn.connect(timeout=10)
    try:
        yield conn
    finally:
        conn.shutdown()


def test_variables_are_exported() -> None:
    values = {name: _env(name) for name in VARS}
    cdir = Path(values["STREAMD_TEST_CEPH_DIR"])
    assert cdir.is_dir(), f"STREAMD_TEST_CEPH_DIR is not a directory: {HINT}"
    assert (cdir / ".streamd-ceph-dev").is_file(), cdir
    for name in ("CEPH_CONF", "CEPH_ADMIN_KEYRING"):
        path = Path(values[name])
        assert path.is_file(), (name, path)
        assert path.resolve().parent == cdir.resolve(), (name, path, cdir)
    assert values["CEPH_ID"] == "admin"
    assert values["CEPH_MON_HOST"].startswith("v2:127.0.0.1:"), values["CEPH_MON_HOST"]
    # Not CEPH_KEYRING: Ceph daemons and tools would let it override ceph.conf.
    assert "CEPH_KEYRING" not in os.environ


def test_bindings_import_from_venv() -> None:
    rados, rbd = _bindings()
    assert rados.Rados().version().major >= 3
    assert rbd.RBD().version() >= (1, 0, 0)


def test_cluster_is_the_one_in_the_test_dir(cluster: Any) -> None:
    conf = Path(_env("CEPH_CONF")).read_text()
    fsid = cluster.get_fsid()
    assert f"fsid = {fsid}" in conf, "the cluster answering is not the one in CEPH_CONF"
    assert _env("CEPH_POOL") in cluster.list_pools()

    # CEPH_MON_HOST + CEPH_ADMIN_KEYRING alone are enough too (no ceph.conf).
    rados, _ = _bindings()
    conn = rados.Rados(rados_id=_env("CEPH_ID"), conf={
        "mon_host": _env("CEPH_MON_HOST"), "keyring": _env("CEPH_ADMIN_KEYRING")})
    conn.connect(timeout=10)
    try:
        assert conn.get_fsid() == fsid
    finally:
        conn.shutdown()


def test_rbd_image_sparse_write_read_diff_remove(cluster: Any) -> None:
    _, rbd = _bindings()
    pool = _env("CEPH_POOL")
    name = f"test-cluster-{uuid.uuid4().hex[:12]}"
    size, offset = 32 * MiB, 8 * MiB + 4096
    data = os.urandom(64 * 1024)
    with cluster.open_ioctx(pool) as ioctx:
        rbd.RBD().create(ioctx, name, size)
        try:
            with rbd.Image(ioctx, name) as image:
                assert image.size() == size
                obj_size = image.stat()["obj_size"]
                assert image.write(data, offset) == len(data)
                image.flush()
                assert image.read(offset, len(data)) == data
                assert image.read(0, 4096) == bytes(4096)  # never written: zeros

            out = subprocess.run(["rbd", "diff", "--format", "json", f"{pool}/{name}"],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            extents = [(e["offset"], e["length"]) for e in json.loads(out.stdout)]
            assert extents, "rbd diff shows no data"
            # Only the RADOS object holding the write has data; rbd diff reports it from
            # the object's start up to the end of the written range.
            first = offset - offset % obj_size
            for start, length in extents:
                assert first <= start and start + length <= first + obj_size, (extents, first)
            covered = sorted(extents)
            assert covered[0][0] <= offset and sum(n for _, n in covered) >= len(data), extents
            assert sum(n for _, n in extents) < obj_size, extents
        finally:
            rbd.RBD().remove(ioctx, name)
        assert name not in rbd.RBD().list(ioctx)


def test_extra_pool_can_be_created_and_deleted(cluster: Any) -> None:
    pool = f"test-extra-{uuid.uuid4().hex[:8]}"
    cluster.create_pool(pool)
    try:
        with cluster.open_ioctx(pool) as ioctx:
            ioctx.write_full("probe", b"hello")
            assert ioctx.read("probe") == b"hello"
    finally:
        cluster.delete_pool(pool)
    assert not cluster.pool_exists(pool)
