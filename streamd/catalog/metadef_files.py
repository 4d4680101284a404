"""Metadata definition files: Glance's format, one namespace per JSON file.

Reading and writing the files the loader and ``streamd metadefs-export`` use. The definitions
Glance publishes ship with streamd in ``metadef_definitions/`` (see its README for the licence).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InvalidRequest

SHIPPED_DEFINITIONS = Path(__file__).with_name("metadef_definitions")


def read_definitions(path: Path | None = None) -> list[dict[str, Any]]:
    """The documents of one file, or of every ``*.json`` file of a directory; the shipped
    definitions when ``path`` is None.

    A directory is read in the order the file system lists it, as glance-manage reads it
    (``os.listdir``): the namespaces are then created, and listed newest first, in the same
    order as by a Glance loading the same directory."""
    path = SHIPPED_DEFINITIONS if path is None else path
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and p.suffix == ".json"]
    elif path.is_file():
        files = [path]
    else:
        raise InvalidRequest(f"{path}: no such file or directory")
    documents = []
    for file in files:
        try:
            document = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InvalidRequest(f"{file}: not a metadata definition file: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("namespace"), str):
            raise InvalidRequest(f"{file}: not a metadata definition file: no namespace")
        documents.append(document)
    return documents


def write_definitions(directory: Path, documents: Sequence[Mapping[str, Any]]) -> list[Path]:
    """One file per namespace, named as glance-manage db_export_metadefs names them (the
    display name, or the namespace, without punctuation)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for document in documents:
        stem = re.sub(r"[\W_]+", "", str(document.get("display_name") or document["namespace"])) or "namespace"
        path = directory / f"{stem}.json"
        path.write_text(json.dumps(document, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
        written.append(path)
    return written
