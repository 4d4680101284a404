"""The data path: streams between clients, kernels, stores, the cache and the catalogue."""

from .cache_tasks import Prefetcher, run_periodically, verify_stale_entry
from .download import ImageDelivery, ImageSource
from .upload import UploadLimits, upload_image

__all__ = ["ImageDelivery", "ImageSource", "Prefetcher", "UploadLimits", "run_periodically", "upload_image", "verify_stale_entry"]
