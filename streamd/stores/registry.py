"""The stores of a node: built from ``enabled_backends``, found by name or by location.

This is the one place that knows which driver serves which store type; every
other module works with the :class:`~streamd.stores.base.Store` contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..config import Config, FileStoreOptions, StoreConfig
from ..errors import ConfigError, InvalidRequest
from .base import Store


def open_store(entry: StoreConfig, config: Config) -> Store:
    """The driver for one configured store (not yet started)."""
    if entry.type == "file":
        from .file import FileStore

        return FileStore(entry.name, entry.options, config.data_dir / "images" / entry.name)
    if entry.type == "rbd":
        from .rbd import RbdStore  # the Ceph bindings are loaded only where an rbd store is configured

        return RbdStore(entry.name, entry.options, config.host_id)
    if entry.type == "s3":
        from .s3 import S3Store  # botocore is loaded only where an s3 store is configured

        # The journal of the node's open multipart uploads (aborted at start-up after a crash).
        return S3Store(entry.name, entry.options, config.data_dir / "s3" / entry.name)
    if entry.type == "swift":
        from .swift import SwiftStore  # python-swiftclient is loaded only where a swift store is configured

        # The journal of the node's segmented uploads (their segments removed at start-up after a crash).
        return SwiftStore(entry.name, entry.options, config.data_dir / "swift" / entry.name)
    if entry.type == "http":
        from .http import HttpStore

        return HttpStore(entry.name, entry.options)
    raise ConfigError([f"store {entry.name}: unknown type {entry.type}"])


def local_directory_store(name: str, directory: Path) -> Store:
    """A store of plain files in ``directory`` on this node (the staging area is one)."""
    from .file import FileStore

    return FileStore(name, FileStoreOptions(filesystem_store_datadir=str(directory)), directory)


class StoreRegistry:
    """The stores of ``enabled_backends``, by name, in configuration order."""

    def __init__(self, stores: list[Store], default: str) -> None:
        self.by_name = {s.name: s for s in stores}
        self.default = default

    @classmethod
    def from_config(cls, config: Config) -> "StoreRegistry":
        return cls([open_store(entry, config) for entry in config.stores], config.default_store)

    def __iter__(self) -> Iterator[Store]:
        return iter(self.by_name.values())

    def get(self, name: str | None) -> Store:
        if name is None:
            return self.by_name[self.default]
        try:
            return self.by_name[name]
        except KeyError:
            raise InvalidRequest(f"Store for identifier {name} not found") from None

    def writable(self, name: str | None) -> Store:
        """The store data may be written to (``get``, and 400 for a read-only one)."""
        store = self.get(name)
        if store.read_only:
            raise InvalidRequest(f"Store {store.name} is read-only")
        return store

    def for_location(self, store_name: str) -> Store | None:
        return self.by_name.get(store_name)

    async def start(self) -> None:
        for store in self:
            await store.start()

    async def stop(self) -> None:
        for store in self:
            await store.stop()
