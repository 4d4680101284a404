"""The image catalogue: metadata in SQLite (embedded) or PostgreSQL (shared).

``Catalog`` (``catalog.py``) is the whole public face; it is composed of one mixin
per concern over shared plumbing (``base.py``): images, listing, tags, members,
uploads, imports (lock and tasks) and cache nodes. ``query.py`` parses list
queries, ``records.py`` holds what the catalogue hands out, ``policy.py`` who may
see and change what, ``status.py`` the status machine, ``models.py`` the tables.
"""

from .catalog import Catalog
from .query import ImageQuery, parse_list_params
from .records import ImageRecord, Location, MemberRecord, TaskRecord
from .usage import ProjectUsage

__all__ = ["Catalog", "ImageQuery", "ImageRecord", "Location", "MemberRecord", "ProjectUsage", "TaskRecord", "parse_list_params"]
