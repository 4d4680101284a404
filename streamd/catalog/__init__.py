"""The image catalogue: metadata in SQLite (embedded) or PostgreSQL (shared).

``Catalog`` (``catalog.py``) is the whole public face; it is composed of one mixin
per concern over shared plumbing (``base.py``): images, listing, tags, members,
uploads, imports (lock and tasks) and cache nodes. ``query.py`` parses list
queries, ``records.py`` holds what the catalogue hands out, ``status.py`` the status machine, ``models.py`` the tables.

Which images a caller can find at all is decided here, in SQL, as Glance's database layer
does (admins see everything; others their project's images, public and community ones, and
shared ones they are a member of). Who may do what with them is ``streamd.policy``'s, above.
"""

from .catalog import Catalog
from .query import ImageQuery, parse_list_params
from .records import ImageRecord, Location, MemberRecord, TaskRecord
from .usage import ProjectUsage

__all__ = ["Catalog", "ImageQuery", "ImageRecord", "Location", "MemberRecord", "ProjectUsage", "TaskRecord", "parse_list_params"]
