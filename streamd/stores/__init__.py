"""Where image data lives: the store contract and the registry of a node's stores.

Outside this package, code imports only what is here (``Store``, ``Reader``,
``Writer``, ``StoredData``, ``StoreRegistry``, ``local_directory_store``); the
drivers (``stores.file``, ``stores.rbd``) are reached through the registry.
"""

from .base import Reader, StoredData, Store, Writer
from .registry import StoreRegistry, local_directory_store, open_store

__all__ = ["Reader", "StoreRegistry", "StoredData", "Store", "Writer", "local_directory_store", "open_store"]
