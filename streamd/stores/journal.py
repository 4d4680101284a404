"""A node's journal of the uploads it has open in an object store, so that a crash leaves nothing.

An object store keeps what an interrupted upload wrote (S3's multipart uploads, Swift's segments)
until someone removes it. The writer records each upload here before its first byte goes out and
drops the entry once the upload is completed or cleaned up; at the next start the store cleans up
whatever the journal still names. One small JSON file per upload, written by rename (whole or absent).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)
SUFFIX = ".upload"


class UploadJournal:
    def __init__(self, directory: Path, label: str) -> None:
        self.directory = directory
        self.label = label  # "s3 store NAME", for the log

    def _path(self, key: str) -> Path:
        return self.directory / (hashlib.sha256(key.encode()).hexdigest()[:32] + SUFFIX)

    def create(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def record(self, key: str, entry: dict[str, str]) -> None:
        """``key``: what names the upload (an upload id, a segment token); ``entry``: what cleans it up."""
        path = self._path(key)
        temp = path.with_suffix(f".{secrets.token_hex(4)}.tmp")
        temp.write_text(json.dumps(entry))
        os.replace(temp, path)

    def drop(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def entries(self, *fields: str) -> Iterator[tuple[Path, tuple[str, ...]]]:
        """Each recorded upload's ``fields``; an unreadable entry is logged and removed."""
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            try:
                entry = json.loads(path.read_text())
                values = tuple(str(entry[f]) for f in fields)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable journal entry %s removed: %s", self.label, path, exc)
                path.unlink(missing_ok=True)
                continue
            yield path, values
