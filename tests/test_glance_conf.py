"""A real Glance 33 glance-api.conf (and its glance-image-import.conf) loads.

The files are those of a Ceph deployment with three stores (a local file store and two RBD
backends), written for Glance with every section a deployment tool writes. The tests check
that they load, which options are honoured with which values, that every other option is
named in the one start-up warning (with its reason, never its value), that the import file
merges under the main file, that `streamd check-config` reports the same warning and
succeeds, and that the real daemon starts on such a file and logs the warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import Daemon, free_port, start_daemon, stop_daemon
from streamd import glance_options
from streamd.config import (EARLIER_GLANCE_OPTIONS, STORE_OPTION_CLASSES, _SECTION_CLASSES, IgnoredOption,
                            ignored_reason, load_config)
from streamd.errors import ConfigError

PYTHON = sys.executable
SECRET = "Zq9-secret-never-logged"

GLANCE_API_CONF = """
[DEFAULT]
debug = false
log_dir = /var/log/kolla/glance
bind_host = 127.0.0.1
bind_port = {port}
workers = 8
data_dir = {data_dir}
show_image_direct_url = true
show_multiple_locations = false
enabled_backends = local:file, ceph-fast:rbd, ceph-slow:rbd
enabled_import_methods = [glance-direct,web-download,copy-image]
image_size_cap = 214748364800
hashing_algorithm = sha512
image_member_quota = 256
image_cache_dir = {data_dir}/image-cache
image_cache_driver = centralized_db
image_cache_sqlite_db = cache.db
image_cache_max_size = 21474836480
image_cache_stall_time = 3600
user_storage_quota = 500GB
property_protection_file = property-protections-roles.conf
property_protection_rule_format = roles
location_strategy = store_type
transport_url = rabbit://openstack:{secret}@10.0.0.11:5672,openstack:{secret}@10.0.0.12:5672//
worker_self_reference_url = http://10.0.0.21:9292
public_endpoint = https://image.cloud.example:9292
use_keystone_limits = false
log_file = /var/log/kolla/glance/glance-api.log

[database]
connection = sqlite:///{data_dir}/catalogue.sqlite
max_retries = -1
connection_recycle_time = 10
max_pool_size = 1
max_overflow = 1000

[glance_store]
default_backend = ceph-fast
stores = file,rbd
filesystem_store_datadir = /var/lib/glance/images/

[local]
filesystem_store_datadir = {data_dir}/local-images
store_description = Local disk of this node
filesystem_thin_provisioning = true
filesystem_store_file_perm = 0
weight = 10

[ceph-fast]
rbd_store_pool = images-ssd
rbd_store_user = glance
rbd_store_ceph_conf = /etc/ceph/ceph.conf
rbd_store_chunk_size = 8
rados_connect_timeout = 5
rbd_thin_provisioning = true
store_description = "SSD-backed Ceph pool"
weight = 100

[ceph-slow]
rbd_store_pool = images-hdd
rbd_store_user = glance-hdd
rbd_store_ceph_conf = /etc/ceph/ceph-hdd.conf
rbd_store_chunk_size = 16
store_description = HDD-backed Ceph pool

[os_glance_staging_store]
filesystem_store_datadir = {data_dir}/os_glance_staging_store

[os_glance_tasks_store]
filesystem_store_datadir = /var/lib/glance/os_glance_tasks_store

[image_format]
disk_formats = raw,qcow2,iso,vmdk
container_formats = bare,ovf
vmdk_allowed_types = streamOptimized,monolithicSparse
require_image_format_match = true

[keystone_authtoken]
www_authenticate_uri = https://keystone.cloud.example:5000
auth_url = https://keystone-internal.cloud.example:5000
auth_type = password
project_domain_id = default
user_domain_id = default
project_name = service
username = glance
password = {secret}
cafile = /etc/ssl/certs/ca-certificates.crt
region_name = RegionOne
memcache_security_strategy = ENCRYPT
memcache_secret_key = {secret}
memcached_servers = 10.0.0.11:11211,10.0.0.12:11211
service_token_roles_required = true
service_type = image

[paste_deploy]
flavor = keystone

[oslo_policy]
enforce_new_defaults = true
enforce_scope = true
policy_file = policy.yaml

[oslo_concurrency]
lock_path = /var/lib/glance/tmp

[os_brick]
lock_path = /var/lib/glance/tmp

[oslo_messaging_notifications]
driver = messagingv2
topics = notifications

[oslo_messaging_rabbit]
heartbeat_in_pthread = false
rabbit_quorum_queue = true
amqp_durable_queues = true

[oslo_middleware]
enable_proxy_headers_parsing = true

[taskflow_executor]
engine_mode = parallel
max_workers = 10
conversion_format = raw

[wsgi]
task_pool_threads = 16
python_interpreter = /usr/bin/python3

[cors]
allowed_origin = https://dashboard.cloud.example
allow_credentials = true

[healthcheck]
backends = disable_by_file
disable_by_file_path = /etc/glance/healthcheck_disable

[profiler]
enabled = false
trace_sqlalchemy = false
hmac_keys = {secret}

[oslo_limit]
auth_url = https://keystone-internal.cloud.example:5000
auth_type = password
username = glance
password = {secret}
system_scope = all
endpoint_id = 0123456789abcdef0123456789abcdef
"""

GLANCE_IMAGE_IMPORT_CONF = """
[image_import_opts]
image_import_plugins = ['image_conversion', 'inject_image_metadata']
max_parallel_stores = 4

[image_conversion]
output_format = raw

[import_filtering_opts]
allowed_schemes = [http,https,ftp]
allowed_hosts = []
allowed_ports = [80,443]
disallowed_hosts = [10.0.0.11, metadata.internal]

[inject_metadata_properties]
ignore_user_roles = admin
inject = hw_disk_bus:scsi,hw_scsi_model:virtio-scsi

[glance_download_properties]
extra_properties = [hw_, trait:, os_distro]
"""

# Everything the files set that streamd does not use: (section, option).
EXPECTED_IGNORED = {
    ("DEFAULT", o) for o in (
        "debug", "log_dir", "workers", "image_cache_driver",
        "image_cache_sqlite_db", "worker_self_reference_url", "log_file")
} | {
    ("database", o) for o in ("max_retries", "connection_recycle_time", "max_pool_size", "max_overflow")
} | {
    ("glance_store", "stores"), ("glance_store", "filesystem_store_datadir"),
    ("local", "filesystem_store_file_perm"),
    ("os_glance_tasks_store", "filesystem_store_datadir"),
    ("image_format", "vmdk_allowed_types"),
    ("image_import_opts", "max_parallel_stores"),
    ("oslo_concurrency", "lock_path"), ("os_brick", "lock_path"),
    ("oslo_messaging_rabbit", "rabbit_quorum_queue"), ("oslo_messaging_rabbit", "amqp_durable_queues"),
    ("oslo_messaging_rabbit", "heartbeat_in_pthread"),
    ("oslo_middleware", "enable_proxy_headers_parsing"),
    ("taskflow_executor", "engine_mode"), ("taskflow_executor", "max_workers"),
    ("taskflow_executor", "conversion_format"),
    ("wsgi", "task_pool_threads"), ("wsgi", "python_interpreter"),
    ("cors", "allowed_origin"), ("cors", "allow_credentials"),
    ("profiler", "enabled"), ("profiler", "trace_sqlalchemy"), ("profiler", "hmac_keys"),
} | {
    # The rest of [keystone_authtoken] is honoured (flavor = keystone selects Keystone validation).
    ("keystone_authtoken", o) for o in (
        "memcache_security_strategy", "memcache_secret_key", "memcached_servers", "service_type")
}


def write_deployment(directory: Path, *, port: int = 9292, main: str = GLANCE_API_CONF,
                     imports: str | None = GLANCE_IMAGE_IMPORT_CONF) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "glance-api.conf"
    path.write_text(main.format(port=port, data_dir=directory / "data", secret=SECRET))
    if imports is not None:
        (directory / "glance-image-import.conf").write_text(imports)
    # [oslo_policy] policy_file names it, so it must exist (an empty policy: Glance's defaults).
    (directory / "policy.yaml").write_text("{}\n")
    # Glance's etc/property-protections-roles.conf.sample (its rules), beside the file that names it.
    (directory / "property-protections-roles.conf").write_text(
        "[^x_.*]\ncreate = admin,member,_member_\nread = admin,member,_member_\n"
        "update = admin,member,_member_\ndelete = admin,member,_member_\n\n"
        "[.*]\ncreate = admin\nread = admin\nupdate = admin\ndelete = admin\n")
    return path


def test_the_deployment_loads_and_honours_what_streamd_implements(tmp_path: Path) -> None:
    config = load_config(write_deployment(tmp_path))
    data = tmp_path / "data"
    assert config.sources == (str(tmp_path / "glance-image-import.conf"), str(tmp_path / "glance-api.conf"))
    d = config.default
    assert (d.bind_host, d.bind_port) == ("127.0.0.1", 9292)
    # [healthcheck] is oslo.middleware's, honoured: draining by Glance's file works as it did.
    assert (config.healthcheck.backends, config.healthcheck.disable_by_file_path) == (
        ("disable_by_file",), "/etc/glance/healthcheck_disable")
    assert d.image_size_cap == 214748364800 and d.hashing_algorithm == "sha512" and d.image_member_quota == 256
    assert d.enabled_import_methods == ("glance-direct", "web-download", "copy-image")
    assert d.public_endpoint == "https://image.cloud.example:9292"
    assert config.cache_dir == data / "image-cache" and d.image_cache_max_size == 20 << 30
    assert d.image_cache_stall_time == 3600
    assert (d.property_protection_file, d.property_protection_rule_format) == (
        "property-protections-roles.conf", "roles")
    assert config.database_url == f"sqlite+aiosqlite:///{data}/catalogue.sqlite"
    assert [(s.name, s.type) for s in config.stores] == [("local", "file"), ("ceph-fast", "rbd"), ("ceph-slow", "rbd")]
    assert config.default_store == "ceph-fast"
    local = config.store("local").options
    assert local.filesystem_store_datadir == f"{data}/local-images" and local.filesystem_thin_provisioning is True
    assert local.store_description == "Local disk of this node"
    fast, slow = config.store("ceph-fast").options, config.store("ceph-slow").options
    assert (fast.rbd_store_pool, fast.rbd_store_user, fast.rbd_store_chunk_size) == ("images-ssd", "glance", 8)
    assert fast.rados_connect_timeout == 5 and fast.rbd_thin_provisioning is True
    assert (slow.rbd_store_pool, slow.rbd_store_user, slow.rbd_store_ceph_conf, slow.rbd_store_chunk_size) == (
        "images-hdd", "glance-hdd", "/etc/ceph/ceph-hdd.conf", 16)
    assert config.staging_dir == data / "os_glance_staging_store"
    assert config.image_format.disk_formats == ("raw", "qcow2", "iso", "vmdk")
    assert config.image_format.container_formats == ("bare", "ovf")
    # From glance-image-import.conf, in oslo.config's list syntax.
    assert config.image_import_opts.image_import_plugins == ("image_conversion", "inject_image_metadata")
    assert config.image_conversion.output_format == "raw"
    filtering = config.import_filtering_opts
    assert filtering.allowed_schemes == ("http", "https", "ftp")
    assert filtering.allowed_hosts == () and filtering.allowed_ports == (80, 443)
    assert filtering.disallowed_hosts == ("10.0.0.11", "metadata.internal")
    assert config.inject_metadata_properties.inject == (("hw_disk_bus", "scsi"), ("hw_scsi_model", "virtio-scsi"))
    assert config.inject_metadata_properties.ignore_user_roles == ("admin",)
    # [paste_deploy] flavor = keystone: Keystone validation with the file's service user.
    assert config.auth_strategy == "keystone" and config.default.auth_strategy == "noauth"
    keystone = config.keystone_authtoken
    assert (keystone.auth_url, keystone.www_authenticate_uri) == ("https://keystone-internal.cloud.example:5000",
                                                                  "https://keystone.cloud.example:5000")
    assert (keystone.username, keystone.password, keystone.project_name) == ("glance", SECRET, "service")
    assert (keystone.user_domain_id, keystone.project_domain_id, keystone.region_name) == ("default", "default",
                                                                                          "RegionOne")
    assert keystone.cafile == "/etc/ssl/certs/ca-certificates.crt" and keystone.service_token_roles_required
    assert keystone.service_token_roles == ("service",) and keystone.token_cache_time == 300
    # Quotas: user_storage_quota in Glance's suffix syntax; [oslo_limit] read though limits are off.
    assert d.user_storage_quota == 500 << 30 and d.use_keystone_limits is False
    limits = config.oslo_limit
    assert (limits.auth_url, limits.auth_type, limits.username, limits.system_scope, limits.endpoint_id) == (
        "https://keystone-internal.cloud.example:5000", "password", "glance", "all", "0123456789abcdef0123456789abcdef")


def test_every_other_option_is_named_in_one_warning(tmp_path: Path) -> None:
    config = load_config(write_deployment(tmp_path))
    assert {(i.section, i.option) for i in config.ignored} == EXPECTED_IGNORED
    warning = config.warning
    assert warning is not None
    lines = warning.splitlines()
    assert lines[0] == f"{len(EXPECTED_IGNORED)} configuration option(s) accepted, ignored here, because:"
    for section, option in EXPECTED_IGNORED:
        line = next((line for line in lines[1:] if line.startswith(f"  [{section}] ")
                     and re.search(rf"[ ,]{re.escape(option)}[,:]", line)), None)
        assert line is not None, (section, option, warning)
        assert line.endswith(": " + ignored_reason(section, option, config.store(section).type
                                                   if section in {"local", "ceph-fast", "ceph-slow"} else None))
    assert "[DEFAULT] image_cache_driver, image_cache_sqlite_db: streamd's cache has its own index" in warning
    assert "[DEFAULT] workers: one event loop per process" in warning
    assert ("[keystone_authtoken] memcache_security_strategy, memcache_secret_key, memcached_servers: "
            "streamd caches validated tokens in-process") in warning
    assert SECRET not in warning  # names, never values


def test_the_main_file_wins_over_the_import_file(tmp_path: Path) -> None:
    main = GLANCE_API_CONF + "\n[image_conversion]\noutput_format = qcow2\n"
    config = load_config(write_deployment(tmp_path, main=main))
    assert config.image_conversion.output_format == "qcow2"  # main file, read last
    assert config.import_filtering_opts.allowed_schemes == ("http", "https", "ftp")  # import file only


def test_without_an_import_file_glance_defaults_hold(tmp_path: Path) -> None:
    config = load_config(write_deployment(tmp_path, imports=None))
    assert config.sources == (str(tmp_path / "glance-api.conf"),)
    assert config.import_filtering_opts.allowed_schemes == ("http", "https")
    assert config.image_import_opts.image_import_plugins == ()


def test_an_option_neither_glance_nor_streamd_knows_is_still_an_error(tmp_path: Path) -> None:
    main = GLANCE_API_CONF.replace("password = {secret}\ncafile", "pasword = {secret}\ncafile")
    imports = GLANCE_IMAGE_IMPORT_CONF.replace("allowed_ports", "alowed_ports")
    main = main.replace("location_strategy", "location_stratgy").replace("[os_brick]", "[os_brik]")
    with pytest.raises(ConfigError) as info:
        load_config(write_deployment(tmp_path, main=main, imports=imports))
    text = "\n".join(info.value.problems)
    assert "[keystone_authtoken] pasword: unknown option (did you mean password?)" in text
    assert "[import_filtering_opts] alowed_ports: unknown option (did you mean allowed_ports?)" in text
    assert "[DEFAULT] location_stratgy: unknown option (did you mean location_strategy?)" in text
    assert "[os_brik]: unknown section" in text
    # flavor = keystone: the misspelt password leaves the service user without one.
    assert "[keystone_authtoken] password: needed with auth_strategy keystone" in text
    assert len(info.value.problems) == 5


def test_a_bad_value_in_the_import_file_is_an_error(tmp_path: Path) -> None:
    imports = GLANCE_IMAGE_IMPORT_CONF.replace("allowed_ports = [80,443]", "allowed_ports = [80,http]")
    with pytest.raises(ConfigError, match=r"\[import_filtering_opts\] allowed_ports = '\[80,http\]'"):
        load_config(write_deployment(tmp_path, imports=imports))


def test_deprecated_names_are_read_as_oslo_config_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "glance-api.conf"
    path.write_text("[DEFAULT]\ndisk_formats = raw,qcow2\nlogfile = /var/log/glance.log\n"
                    "[keystone_authtoken]\nmemcache_servers = 10.0.0.1:11211\n")
    config = load_config(path)
    assert config.image_format.disk_formats == ("raw", "qcow2")
    assert {(i.section, i.option) for i in config.ignored} == {("DEFAULT", "log_file"),
                                                                ("keystone_authtoken", "memcached_servers")}


def test_glance_download_is_offered_with_its_properties(tmp_path: Path) -> None:
    path = tmp_path / "glance-api.conf"
    path.write_text("[DEFAULT]\nenabled_import_methods = [glance-direct, 'glance-download', web-download]\n"
                    "[glance_download_properties]\nextra_properties = [hw_, 'os_distro']\n")
    config = load_config(path)
    assert config.default.enabled_import_methods == ("glance-direct", "glance-download", "web-download")
    assert config.glance_download_properties.extra_properties == ("hw_", "os_distro")
    assert config.ignored == ()
    # Glance's default prefixes without the section.
    path.write_text("[DEFAULT]\nenabled_import_methods = [glance-download]\n")
    assert load_config(path).glance_download_properties.extra_properties == (
        "hw_", "trait:", "os_distro", "os_secure_boot", "os_type")


def test_every_glance_option_is_implemented_or_has_a_reason() -> None:
    for section, names in [*glance_options.SECTIONS.items(), *EARLIER_GLANCE_OPTIONS.items()]:
        cls = _SECTION_CLASSES.get(section)
        implemented = {f.name for f in dataclasses.fields(cls)} if cls else set()
        for name in names - implemented:
            assert ignored_reason(section, name), (section, name)
    for kind, cls in STORE_OPTION_CLASSES.items():
        implemented = {f.name for f in dataclasses.fields(cls)}
        for name in glance_options.STORE_SECTIONS[kind] - implemented:
            assert ignored_reason(kind, name, kind), (kind, name)
    # The generated table knows the options the issue names.
    assert {"user_storage_quota", "image_cache_driver", "image_cache_sqlite_db",
            "property_protection_file"} <= glance_options.SECTIONS["DEFAULT"]
    assert "max_parallel_stores" in glance_options.SECTIONS["image_import_opts"]
    assert "vmdk_allowed_types" in glance_options.SECTIONS["image_format"]
    assert "stores" in glance_options.SECTIONS["glance_store"]
    assert "lock_path" in glance_options.SECTIONS["os_brick"]


def test_check_config_reports_the_warning_and_succeeds(tmp_path: Path) -> None:
    path = write_deployment(tmp_path)
    result = subprocess.run([PYTHON, "-m", "streamd", "check-config", "--config", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{tmp_path / 'glance-image-import.conf'}, {path}: OK"
    assert "streamd: warning: " + load_config(path).warning in result.stderr  # type: ignore[operator]
    assert SECRET not in result.stderr


def _stores_of(daemon: Daemon) -> list[str]:
    request = urllib.request.Request(daemon.url + "/v2/info/stores", headers={"X-Roles": "admin,member,reader"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [s["id"] for s in json.load(response)["stores"]]


def _check_started(daemon: Daemon, stores: list[str]) -> None:
    log = daemon.log()
    expected = load_config(daemon.config_path).warning
    assert expected is not None
    # One warning record, its whole text, on the line of the WARNING level.
    assert log.count("configuration option(s) accepted, ignored here, because:") == 1
    assert f"WARNING streamd: {expected}" in log
    assert SECRET not in log
    assert sorted(_stores_of(daemon)) == sorted(stores)


def _start(tmp_path: Path, main: str) -> Daemon:
    """The daemon on the deployment's files: conftest's streamd.conf (its [DEFAULT] lines, then
    the glance-api.conf text, which merges in) with glance-image-import.conf beside it.

    Without its paste flavor: the file's Keystone is not there (tests/test_keystone_auth.py runs
    keystone mode against a real one); these tests are about the stores."""
    main = main.replace("flavor = keystone\n", "")
    port = free_port()
    write_deployment(tmp_path, port=port, main=main)
    return start_daemon(tmp_path, main.format(port=port, data_dir=tmp_path / "data", secret=SECRET), port=port)


def test_the_daemon_starts_on_the_deployment_with_file_stores(tmp_path: Path) -> None:
    # The same deployment, its two Ceph backends turned into file stores for a host without Ceph.
    main = (GLANCE_API_CONF.replace("ceph-fast:rbd, ceph-slow:rbd", "ceph-fast:file, ceph-slow:file")
            .replace("rbd_store_pool = images-ssd", "filesystem_store_datadir = {data_dir}/fast")
            .replace("rbd_store_pool = images-hdd", "filesystem_store_datadir = {data_dir}/slow"))
    main = "\n".join(line for line in main.splitlines() if not line.startswith(("rbd_", "rados_")))
    daemon = _start(tmp_path, main)
    try:
        _check_started(daemon, ["local", "ceph-fast", "ceph-slow"])
    finally:
        assert stop_daemon(daemon) == 0, daemon.log()


def test_the_daemon_starts_on_the_deployment_with_ceph(tmp_path: Path) -> None:
    if not os.environ.get("CEPH_CONF"):
        pytest.fail("CEPH_CONF is not set: run the suite with scripts/test.sh, which starts a throwaway Ceph cluster")
    ceph_conf, pool, user = os.environ["CEPH_CONF"], os.environ.get("CEPH_POOL", "images"), os.environ.get("CEPH_ID", "admin")
    main = (GLANCE_API_CONF.replace("images-ssd", pool).replace("images-hdd", pool)
            .replace("rbd_store_user = glance-hdd", f"rbd_store_user = {user}")
            .replace("rbd_store_user = glance", f"rbd_store_user = {user}")
            .replace("/etc/ceph/ceph-hdd.conf", ceph_conf).replace("/etc/ceph/ceph.conf", ceph_conf))
    daemon = _start(tmp_path, main)
    try:
        _check_started(daemon, ["local", "ceph-fast", "ceph-slow"])
    finally:
        assert stop_daemon(daemon) == 0, daemon.log()
