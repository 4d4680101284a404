"""The image catalogue: metadata in SQLite (embedded) or PostgreSQL (shared)."""

from .catalog import Catalog
from .query import ImageQuery, parse_list_params
from .records import ImageRecord, Location, MemberRecord, TaskRecord

__all__ = ["Catalog", "ImageQuery", "ImageRecord", "Location", "MemberRecord", "TaskRecord", "parse_list_params"]
