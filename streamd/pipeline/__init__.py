"""The data path: streams between clients, kernels, stores, the cache and the catalogue."""

from .cache_tasks import Prefetcher, verify_stale_entry
from .download import ImageDelivery, ImageSource
from .hashing import Digests
from .ingest import Ingested, Progress, measure, refuse_oversized, write_to_stores
from .readahead import file_chunks, reader_chunks
from .scrubber import ScrubReport, Scrubber
from .upload import UploadLimits, inspection_for, upload_image

__all__ = ["Digests", "ImageDelivery", "ImageSource", "Ingested", "Prefetcher", "Progress", "ScrubReport", "Scrubber", "UploadLimits",
           "file_chunks", "inspection_for", "measure", "refuse_oversized", "reader_chunks", "upload_image", "verify_stale_entry",
           "write_to_stores"]
