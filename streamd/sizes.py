"""Sizes shared across the data path, defined once at the bottom layer so every layer may use them."""

from __future__ import annotations

# Bytes moved per step of the data path: a store or file read, a batch of an upload's socket pieces,
# a peer read, a conversion job, a (de)compression step. Measured on downloads: 4 MiB reads cost
# fewer thread hops per GiB than 1 MiB (0.55 vs 0.75 CPU-s/GiB, 1.6 vs 1.3 GB/s).
CHUNK = 4 << 20

# O_DIRECT wants the memory, the file offset and the length of every read and write aligned to the
# device's logical block: 4096 covers every block size in use (filesystem_store_direct_io).
DIRECT_IO_ALIGN = 4096

__all__ = ["CHUNK", "DIRECT_IO_ALIGN"]
