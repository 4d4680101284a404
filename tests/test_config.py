"""Configuration: Glance's option names, every wrong option named at once, a documented example."""

from __future__ import annotations

import json
import os
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
                line = "enabled_backends = fs:file,rbd:rbd,s3:s3,swift:swift,web:http"
            if section == "[s3]" and line.split(" = ")[0] in S3_REQUIRED:
                line = f"{line.split(' = ')[0]} = required-{len(lines)}"  # no default: the store needs them
            if section == "[swift]" and line.split(" = ")[0] in SWIFT_REQUIRED:
                line = f"{line.split(' = ')[0]} = project:required-{len(lines)}"
        lines.append(line)
    config = load_config(write(tmp_path, "\n".join(lines)))
    assert config.default.bind_port == 9292
    assert config.store("rbd").options.rbd_thin_provisioning is True
    assert config.store("rbd").options.rbd_store_pool == "images"
    assert config.store("web").options.https_insecure is True
    assert config.store("s3").options.s3_store_large_object_size == 100
    assert config.store("s3").options.s3_store_bucket_url_format == "auto"
    assert config.store("swift").options.swift_store_large_object_size == 5120
    assert config.store("swift").options.swift_store_container == "glance"
    assert config.store("swift").options.swift_store_auth_version == "3"


S3_REQUIRED = ("s3_store_host", "s3_store_access_key", "s3_store_secret_key", "s3_store_bucket")
SWIFT_REQUIRED = ("swift_store_auth_address", "swift_store_user", "swift_store_key")


# oslo.config's ListOpt (oslo_config/types.py List) on the values of glance-api.conf: what
# Glance 33 reads, checked against oslo.config 10.7, with streamd's two leniencies (no
# brackets needed, empty items dropped) at the end.
QUOTED_LISTS = [
    ("[http,https,ftp]", ("http", "https", "ftp")),
    ("[]", ()),
    ("[glance-direct,web-download]", ("glance-direct", "web-download")),
    ("[ 'http' , \"https\" ]", ("http", "https")),
    ("['a,b', c]", ("a,b", "c")),             # a quoted item may hold a comma
    ("[http,https],", ("http", "https")),     # trailing commas go before the brackets
    (" [ http ] ", ("http",)),
    ("http,https", ("http", "https")),        # Glance: an error (bounds); streamd always took it
    ("[a,,b]", ("a", "b")),                   # Glance: 'a', '', 'b'
]
PORT_LISTS = [("[80,443]", (80, 443)), ("[]", ()), ("[ 80 , 443 ]", (80, 443)), ("[80, 443, ]", (80, 443)),
              ("80,443", (80, 443))]
REFUSED = ["['http]", "[http", "http]", "[80,http]", "[0]", "[65536]"]


@pytest.mark.parametrize("raw, expected", QUOTED_LISTS)
def test_bracketed_lists_parse_as_oslo_config(tmp_path: Path, raw: str, expected: tuple[str, ...]) -> None:
    config = load_config(write(tmp_path, f"[import_filtering_opts]\nallowed_schemes = {raw}\n"))
    assert config.import_filtering_opts.allowed_schemes == expected


@pytest.mark.parametrize("raw, expected", PORT_LISTS)
def test_port_lists_parse_as_oslo_config(tmp_path: Path, raw: str, expected: tuple[int, ...]) -> None:
    config = load_config(write(tmp_path, f"[import_filtering_opts]\nallowed_ports = {raw}\n"))
    assert config.import_filtering_opts.allowed_ports == expected


@pytest.mark.parametrize("raw", REFUSED)
def test_malformed_lists_are_refused(tmp_path: Path, raw: str) -> None:
    key = "allowed_ports" if any(c.isdigit() for c in raw) else "allowed_schemes"
    with pytest.raises(ConfigError, match=rf"\[import_filtering_opts\] {key} = "):
        load_config(write(tmp_path, f"[import_filtering_opts]\n{key} = {raw}\n"))


def test_values_are_unquoted_as_oslo_config_reads_them(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[DEFAULT]\npublic_endpoint = "https://image.example:9292"\n'
                                         "[noauth]\ndefault_user_id = 'u1'\n"))
    assert config.default.public_endpoint == "https://image.example:9292"
    assert config.noauth.default_user_id == "u1"


def _glance_python() -> str:
    """The Python of the Glance 33 venv that scripts/install.sh --test makes (it has oslo.config)."""
    candidate = Path(os.environ.get("STREAMD_GLANCE_PYTHON") or ROOT / ".venv-glance" / "bin" / "python")
    if not candidate.exists():
        pytest.fail(f"{candidate} is missing: run scripts/install.sh --test (it makes the Glance 33 venv)")
    return str(candidate)


def test_list_parsing_matches_the_installed_oslo_config() -> None:
    lenient = {"http,https", "[a,,b]", "[80, 443, ]", "80,443"}
    cases = [raw for raw, _ in QUOTED_LISTS + PORT_LISTS if raw not in lenient] + REFUSED
    script = (
        "import json, sys\n"
        "from oslo_config import types\n"
        "quoted = types.List(types.String(quotes=True), bounds=True)\n"
        "ports = types.List(types.Integer(min=1, max=65535), bounds=True)\n"
        "out = {}\n"
        "for raw in json.load(sys.stdin):\n"
        "    t = ports if any(c.isdigit() for c in raw) and 'a' not in raw else quoted\n"
        "    try:\n"
        "        out[raw] = t(raw)\n"
        "    except ValueError:\n"
        "        out[raw] = None\n"
        "print(json.dumps(out))\n")
    result = subprocess.run([_glance_python(), "-c", script], input=json.dumps(cases), capture_output=True,
                            text=True, timeout=60, check=True)
    theirs = json.loads(result.stdout)
    ours = dict(QUOTED_LISTS + PORT_LISTS)
    for raw in cases:
        if raw in REFUSED:
            assert theirs[raw] is None, raw
        else:
            assert tuple(theirs[raw]) == ours[raw], raw
