"""Local administration: the admin Unix socket and its client."""

from .server import AdminServer, AdminSocketInUse

__all__ = ["AdminServer", "AdminSocketInUse"]
