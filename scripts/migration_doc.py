"""Write the generated part of docs/migrating-from-glance.md (which options map, which are ignored):

    PYTHONPATH=. .venv/bin/python scripts/migration_doc.py

Everything between the BEGIN and END markers is replaced by ``streamd.config.render_option_map()``;
tests/test_migration_doc.py checks the document holds exactly that.
"""

from __future__ import annotations

import sys
from pathlib import Path

from streamd.config import render_option_map

DOC = Path(__file__).resolve().parent.parent / "docs" / "migrating-from-glance.md"
BEGIN = "<!-- BEGIN option map -->"
END = "<!-- END option map -->"


def rewrite(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{render_option_map()}{END}{tail}"


if __name__ == "__main__":
    DOC.write_text(rewrite(DOC.read_text()))
    sys.exit(0)
