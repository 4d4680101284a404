"""The data path: streams between clients, kernels, stores and the catalogue."""

from .upload import UploadLimits, upload_image

__all__ = ["UploadLimits", "upload_image"]
