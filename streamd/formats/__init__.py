"""Disk image formats: chunk-fed inspectors with named safety checks, and qcow2 -> raw.

Layer: above errors/config/kernels, below pipeline and api (tests/test_layering.py).
Nothing here does network I/O or knows about HTTP; the converter does file I/O only.
"""

from __future__ import annotations

from .base import FormatRejected, Inspector
from .detect import (FileDetection, FormatDetector, ImageInspection, InspectionPolicy, Verdict, detect_file,
                     detect_stream)
from .inspectors import ALL_FORMATS, ALL_INSPECTORS

__all__ = ["ALL_FORMATS", "ALL_INSPECTORS", "FileDetection", "FormatDetector", "FormatRejected", "ImageInspection",
           "Inspector", "InspectionPolicy", "Verdict", "detect_file", "detect_stream"]
