"""The on-disk image cache (mechanics only: what is cached, LRU, fills in flight)."""

from .cache import Fill, ImageCache, PruneResult
from .index import CacheEntry

__all__ = ["CacheEntry", "Fill", "ImageCache", "PruneResult"]
