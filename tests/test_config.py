"""Configuration: Glance's option names, every wrong option named at once, a documented example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from streamd.config import load_config, render_example
from streamd.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "streamd.conf"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_setup() -> None:
    config = load_config(None)
    assert config.default.bind_host == "127.0.0.1" and config.default.bind_port == 9292
    assert config.database_url.startswith("sqlite+aiosqlite:///") and config.database_url.endswith("streamd.sqlite")
    assert [(s.name, s.type) for s in config.stores] == [("fs", "file")]
    assert config.default_store == "fs"
    assert config.default.hashing_algorithm == "sha512"
    assert config.default.image_property_quota == 128 and config.default.api_limit_max == 1000


def test_glance_style_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
[DEFAULT]
bind_host = 0.0.0.0
bind_port = 9393
enabled_backends = fast:file, slow:file
image_size_cap = 1073741824
hashing_algorithm = sha256
workers = 4
debug = true

[glance_store]
default_backend = slow

[database]
connection = postgresql://glance:secret@db.example/glance

[image_format]
disk_formats = raw,qcow2
container_formats = bare

[fast]
filesystem_store_datadir = /srv/fast
filesystem_thin_provisioning = true

[keystone_authtoken]
www_authenticate_uri = http://keystone/
"""))
    assert config.default.bind_port == 9393 and config.default.image_size_cap == 1 << 30
    assert config.default_store == "slow"
    assert config.database_url == "postgresql+asyncpg://glance:secret@db.example/glance"
    assert config.image_format.disk_formats == ("raw", "qcow2")
    fast = config.store("fast").options
    assert fast.filesystem_store_datadir == "/srv/fast" and fast.filesystem_thin_provisioning is True
    assert config.store("slow").options.filesystem_thin_provisioning is False


def test_every_wrong_option_is_named_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, """
[DEFAULT]
bind_port = ninety
bind_prot = 9292
hashing_algorithm = crc7
enabled_backends = fs:file,cloud:s3
limit_param_default = 0

[glance_store]
default_backend = nowhere

[database]
connection = mysql://x

[fss]
filesystem_store_datadir = /x
""")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = "\n".join(info.value.problems)
    for needle in ("bind_port = 'ninety'", "bind_prot: unknown option (did you mean bind_port?)",
                   "hashing_algorithm", "enabled_backends", "limit_param_default", "connection",
                   "[fss]: unknown section"):
        assert needle in text, (needle, text)
    assert len(info.value.problems) >= 7


def test_default_backend_must_be_enabled(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="default_backend"):
        load_config(write(tmp_path, "[glance_store]\ndefault_backend = rbd1\n"))


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.conf")
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "no section header\n"))


def test_bad_config_exits_non_zero_naming_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "[DEFAULT]\nbind_port = -1\nimage_tag_quota = many\n")
    result = subprocess.run([sys.executable, "-m", "streamd", "serve", "--config", str(path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "bind_port" in result.stderr and "image_tag_quota" in result.stderr
    check = subprocess.run([sys.executable, "-m", "streamd", "check-config", "--config", str(path)],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 2


def test_shipped_example_documents_every_option_and_loads(tmp_path: Path) -> None:
    shipped = (ROOT / "etc" / "streamd.conf.example").read_text()
    assert shipped == render_example(), "regenerate with: streamd config-example > etc/streamd.conf.example"
    # Uncommenting every option with its default must give a valid configuration.
    lines, section = [], ""
    for line in shipped.splitlines():
        if line.startswith("["):
            section = line
        if line.startswith("#") and " = " in line:
            line = line[1:]
            if line.startswith("enabled_backends"):
                line = "enabled_backends = fs:file,rbd:rbd"
        lines.append(line)
    config = load_config(write(tmp_path, "\n".join(lines)))
    assert config.default.bind_port == 9292
    assert config.store("rbd").options.rbd_thin_provisioning is True
    assert config.store("rbd").options.rbd_store_pool == "images"
