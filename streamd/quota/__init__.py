"""Quotas: ``user_storage_quota`` and Keystone's unified limits (``limits``), the limits read from
Keystone by an HTTP client of its own (``keystone``)."""

from .keystone import KeystoneLimits
from .limits import (IMAGE_COUNT_TOTAL, IMAGE_COUNT_UPLOADING, IMAGE_SIZE_TOTAL, IMAGE_STAGE_TOTAL, LIMIT_NAMES,
                     ByteBudget, ProjectQuota, Quotas)

__all__ = ["ByteBudget", "IMAGE_COUNT_TOTAL", "IMAGE_COUNT_UPLOADING", "IMAGE_SIZE_TOTAL", "IMAGE_STAGE_TOTAL",
           "KeystoneLimits", "LIMIT_NAMES", "ProjectQuota", "Quotas"]
