"""The image catalogue: ``Catalog``, the one object the rest of streamd talks to.

``Catalog`` owns the database engine. It speaks records and ``RequestContext``s,
never HTTP. The same queries run on SQLite (the embedded default) and PostgreSQL
(several nodes sharing one catalogue).

It is composed of one mixin per concern, each in its own module and each
readable alone:

- ``base.py``: engine, migrations, the read/write connections (the SQLite write
  lock and ``BEGIN IMMEDIATE``), image rows -> ``ImageRecord``, the status CAS;
- ``images.py``: create, read, update, status moves, delete, drop a location;
- ``listing.py``: ``GET /v2/images`` as SQL (filters, visibility, paging);
- ``tags.py`` and ``members.py``: one tag; an image's members;
- ``uploads.py``: data coming in (upload and stage status moves, recovery);
- ``imports.py``: the import lock and its tasks;
- ``cache_nodes.py``: which node caches what, and the data digests peers trust;
- ``usage.py``: what a project holds, as the quotas count it.
- ``scrub.py``: delayed delete: pending_delete images, the scrubber's claims, restore.
- ``purge.py``: hard-deleting what is kept of deleted images and expired tasks (streamd-manage db purge);
- ``metadefs.py``: the metadata definitions catalogue (namespaces, objects, properties, tags,
  resource types).

Why mixins over a shared base rather than one object per concern: the concerns
share one engine, one write lock and the image-row helpers, and several write
the same rows in one transaction (an upload's location, an import's
properties), so separate objects would each need the same plumbing handed to
them, while callers would have to learn which object holds which method. Each
mixin subclasses ``CatalogBase`` and uses only its plumbing: no mixin calls
another's methods (module-level helpers such as ``members.membership`` are
imported where they are needed).
"""

from __future__ import annotations

from .base import CatalogBase
from .cache_nodes import CacheNodesMixin
from .images import ImagesMixin
from .imports import (FAILED_IMPORT, IMPORT_LOCK, IMPORTING_TO, STAGE_HOST, TASK_TIME_TO_LIVE, ImportsMixin,
                      store_list)
from .listing import ListingMixin
from .members import MembersMixin
from .purge import PurgeMixin
from .scrub import ScrubMixin
from .metadefs import MetadefsMixin
from .tags import TagsMixin
from .uploads import UploadsMixin
from .usage import UsageMixin

__all__ = ["Catalog", "FAILED_IMPORT", "IMPORT_LOCK", "IMPORTING_TO", "STAGE_HOST", "TASK_TIME_TO_LIVE",
           "store_list"]


class Catalog(ImagesMixin, ListingMixin, TagsMixin, MembersMixin, UploadsMixin, ImportsMixin, CacheNodesMixin,
              UsageMixin, ScrubMixin, MetadefsMixin, PurgeMixin, CatalogBase):
    """Images, their members, tags and locations, uploads, imports, cache peers and metadata
    definitions, in one catalogue."""
