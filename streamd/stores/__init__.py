"""Where image data lives: a registry of the configured stores."""

from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..errors import InvalidRequest
from .base import Reader, StoredData, Store, Writer
from .file import FileStore


class StoreRegistry:
    """The stores of ``enabled_backends``, by name, in configuration order."""

    def __init__(self, stores: list[Store], default: str) -> None:
        self.by_name = {s.name: s for s in stores}
        self.default = default

    @classmethod
    def from_config(cls, config: Config) -> "StoreRegistry":
        stores: list[Store] = []
        for entry in config.stores:
            if entry.type == "file":
                stores.append(FileStore(entry.name, entry.options, config.data_dir / "images" / entry.name))
            elif entry.type == "rbd":
                from .rbd import RbdStore

                stores.append(RbdStore(entry.name, entry.options, config.host_id))
        return cls(stores, config.default_store)

    def get(self, name: str | None) -> Store:
        if name is None:
            return self.by_name[self.default]
        try:
            return self.by_name[name]
        except KeyError:
            raise InvalidRequest(f"Store for identifier {name} not found") from None

    def for_location(self, store_name: str) -> Store | None:
        return self.by_name.get(store_name)

    async def start(self) -> None:
        for store in self.by_name.values():
            await store.start()

    async def stop(self) -> None:
        for store in self.by_name.values():
            await store.stop()


__all__ = ["FileStore", "Reader", "StoreRegistry", "StoredData", "Store", "Writer"]
