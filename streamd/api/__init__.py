"""The HTTP edge: the Images API v2 on aiohttp."""

from .app import create_app
from .metrics import create_metrics_app

__all__ = ["create_app", "create_metrics_app"]
