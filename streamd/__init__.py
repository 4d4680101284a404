"""streamd: an image service data plane that speaks the OpenStack Images API v2."""

__version__ = "0.1.0"
