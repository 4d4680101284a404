"""docs/migrating-from-glance.md says what is true: its option map is what streamd.config generates
(every Glance option of every section, honoured or ignored with the start-up warning's reason), the
sample /etc/streamd/streamd.conf loads clean, and the README links to the guide."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from streamd import glance_options
from streamd.config import IGNORED_REASONS, glance_option_names, load_config, render_option_map

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "migrating-from-glance.md"
SAMPLE = ROOT / "etc" / "streamd" / "streamd.conf"


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("migration_doc", ROOT / "scripts" / "migration_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_option_map_is_generated_and_up_to_date() -> None:
    text = DOC.read_text()
    script = _script()
    assert script.rewrite(text) == text, "run: PYTHONPATH=. .venv/bin/python scripts/migration_doc.py"
    assert render_option_map() in text
    # And the check can fail: a map edited by hand is put back by the generator.
    head, mapped = text.split("<!-- BEGIN option map -->", 1)
    edited = head + "<!-- BEGIN option map -->" + mapped.replace("`workers`", "", 1)
    assert edited != text and script.rewrite(edited) == text


def test_every_ignored_option_is_listed_with_its_reason() -> None:
    text = DOC.read_text()
    mapped = text.split("<!-- BEGIN option map -->", 1)[1]
    for section, reasons in IGNORED_REASONS.items():
        for option, reason in reasons.items():
            if option != "*":
                assert f"`{option}`" in mapped, (section, option)
            # node_staging_uri is honoured, and ignored only beside [os_glance_staging_store] (the
            # hand-written part says so); every other reason is the map's.
            if (section, option) != ("DEFAULT", "node_staging_uri"):
                assert reason in mapped, (section, option)
    assert "`node_staging_uri`" in mapped and "`node_staging_uri` is named as ignored" in text
    # Every option Glance 33 knows in every section is named somewhere in the map.
    for section in glance_options.SECTIONS:
        for option in glance_option_names(section):
            assert f"`{option}`" in mapped or f"`[{section}]` (" in mapped, (section, option)
    for store_type in glance_options.STORE_SECTIONS:
        assert f"`{store_type}`" in mapped


def test_a_real_glance_style_file_warns_only_of_options_the_guide_lists(tmp_path: Path) -> None:
    conf = tmp_path / "glance-api.conf"
    conf.write_text("[DEFAULT]\nworkers = 4\ndebug = true\nimage_cache_driver = sqlite\ncert_file = /x\n"
                    "[database]\nmax_pool_size = 5\n[cors]\nallowed_origin = *\n[wsgi]\npython_interpreter = x\n")
    config = load_config(conf)
    assert len(config.ignored) == 7
    mapped = DOC.read_text().split("<!-- BEGIN option map -->", 1)[1]
    for entry in config.ignored:
        assert entry.reason in mapped and (f"`{entry.option}`" in mapped or f"`[{entry.section}]` (" in mapped)


def test_the_sample_configuration_loads_clean_and_the_readme_links_the_guide() -> None:
    result = subprocess.run([sys.executable, "-m", "streamd", "check-config", "--config", str(SAMPLE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"{SAMPLE}: OK", result.stdout + result.stderr
    assert result.stderr == ""  # no ignored option in it
    config = load_config(SAMPLE)
    assert config.ignored == () and config.auth_strategy == "keystone"
    assert [s.type for s in config.stores] == ["file", "rbd"] and config.default_store == "ceph"
    assert SAMPLE.read_text() != (ROOT / "etc" / "streamd.conf.example").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "docs/migrating-from-glance.md" in readme and "etc/systemd/streamd.service" in readme
