"""The catalogue's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Alembic migrations under ``migrations/`` create them; this module is the
single description the queries are written against.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

images = sa.Table(
    "images", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(255)),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("visibility", sa.String(20), nullable=False),
    sa.Column("protected", sa.Boolean, nullable=False, default=False),
    sa.Column("os_hidden", sa.Boolean, nullable=False, default=False),
    sa.Column("disk_format", sa.String(20)),
    sa.Column("container_format", sa.String(20)),
    sa.Column("size", sa.BigInteger),
    sa.Column("virtual_size", sa.BigInteger),
    sa.Column("checksum", sa.String(32)),
    sa.Column("os_hash_algo", sa.String(64)),
    sa.Column("os_hash_value", sa.String(128)),
    sa.Column("min_disk", sa.Integer, nullable=False, default=0),
    sa.Column("min_ram", sa.Integer, nullable=False, default=0),
    sa.Column("owner", sa.String(255)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("deleted", sa.Boolean, nullable=False, default=False),
    sa.Column("deleted_at", sa.DateTime),
    sa.Index("ix_images_owner", "owner"),
    sa.Index("ix_images_visibility", "visibility"),
    sa.Index("ix_images_created_at_id", "created_at", "id"),
    sa.Index("ix_images_status", "status"),
    # The list's name sorts (migration 0008): name as listed (NULL as ''), then the tiebreakers,
    # in one direction and with the tiebreakers the other way.
    sa.Index("ix_images_name_created_at_id", sa.func.coalesce(sa.column("name"), ""), "created_at", "id"),
    sa.Index("ix_images_name_created_at_id_desc", sa.func.coalesce(sa.column("name"), ""),
             sa.desc(sa.column("created_at")), sa.desc(sa.column("id"))),
)

image_properties = sa.Table(
    "image_properties", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Index("ix_image_properties_name_value", "name", "value"),
)

image_tags = sa.Table(
    "image_tags", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("value", sa.String(255), primary_key=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_image_tags_value", "value"),
)

image_members = sa.Table(
    "image_members", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("member", sa.String(255), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_image_members_member", "member"),
)

image_locations = sa.Table(
    "image_locations", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    sa.Column("store", sa.String(255), nullable=False),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("metadata_json", sa.Text, nullable=False, default="{}"),
    sa.Column("status", sa.String(30), nullable=False, default="active"),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Index("ix_image_locations_image_id", "image_id"),
)

image_uploads = sa.Table(
    "image_uploads", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("started_at", sa.DateTime, nullable=False),
    sa.Index("ix_image_uploads_host", "host"),
)

cache_nodes = sa.Table(
    "cache_nodes", metadata,
    sa.Column("node_id", sa.String(255), primary_key=True),
    sa.Column("url", sa.String(1024), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

node_cached_images = sa.Table(
    "node_cached_images", metadata,
    sa.Column("node_id", sa.String(255), sa.ForeignKey("cache_nodes.node_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("image_id", sa.String(36), primary_key=True),
    sa.Index("ix_node_cached_images_image_id", "image_id"),
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("type", sa.String(30), nullable=False),
    sa.Column("status", sa.String(30), nullable=False),
    sa.Column("owner", sa.String(255)),
    sa.Column("user_id", sa.String(255)),
    sa.Column("request_id", sa.String(255)),
    sa.Column("image_id", sa.String(36)),
    # The node running the task: it recovers its own dead tasks at start-up.
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("input_json", sa.Text, nullable=False),
    sa.Column("result_json", sa.Text),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    # Bumped by the running import's heartbeat: a lock whose task stopped beating is dead.
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime),
    sa.Index("ix_tasks_image_id", "image_id"),
    sa.Index("ix_tasks_host_status", "host", "status"),
)

# BLAKE3 of an image's data, computed by the node that first verified a full copy against
# os_hash_value (the one it is recorded with); peers' copies are checked against it at ~7 GB/s
# instead of re-computing md5 and sha512 (~0.75 GB/s each here).
image_data_digests = sa.Table(
    "image_data_digests", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("os_hash_value", sa.String(128), nullable=False),
    sa.Column("blake3", sa.String(64), nullable=False),
)

# Cluster-wide single flight: the one node that fills an image from the backend (the others stream
# its fill), while its lease is renewed; a lease past expires_at belongs to a dead filler.
image_fill_leases = sa.Table(
    "image_fill_leases", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("node_id", sa.String(255), nullable=False),
    sa.Column("url", sa.String(1024), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
)

# BLAKE3 of each 4 MiB chunk of an image's data (index 0 is bytes [0, 4 MiB)), recorded by the filler
# from the backend's bytes as its fill goes: what the other nodes check each chunk of its fill with.
image_chunk_digests = sa.Table(
    "image_chunk_digests", metadata,
    sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("chunk_index", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("blake3", sa.String(64), nullable=False),
)

# -- metadata definitions (metadefs): Glance's catalogue of the properties images, flavors and
# volumes may carry. Names are unique where Glance makes them unique: a namespace globally, an
# object, property or tag within its namespace, a resource type globally. Deleting a namespace
# deletes its contents (ON DELETE CASCADE; the catalogue also deletes them explicitly, so that
# the rule holds whether or not SQLite enforces foreign keys on a given connection).
# As in Glance, rows loaded from definition files have no updated_at (shown without one), and
# a namespace file may leave visibility and protected unset (NULL).
metadef_namespaces = sa.Table(
    "metadef_namespaces", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("namespace", sa.String(80), nullable=False, unique=True),
    sa.Column("display_name", sa.String(80)),
    sa.Column("description", sa.Text),
    sa.Column("visibility", sa.String(32)),
    sa.Column("protected", sa.Boolean),
    sa.Column("owner", sa.String(255)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.Index("ix_metadef_namespaces_owner", "owner"),
)

metadef_objects = sa.Table(
    "metadef_objects", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("namespace_id", sa.Integer, sa.ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("required_json", sa.Text, nullable=False),   # a JSON list of property names
    sa.Column("properties_json", sa.Text, nullable=False),  # a JSON object: name -> property schema
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_objects_namespace_id_name"),
)

metadef_properties = sa.Table(
    "metadef_properties", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("namespace_id", sa.Integer, sa.ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("schema_json", sa.Text, nullable=False),  # the property's JSON schema, as the client gave it
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_properties_namespace_id_name"),
)

metadef_tags = sa.Table(
    "metadef_tags", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("namespace_id", sa.Integer, sa.ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("name", sa.String(80), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_tags_namespace_id_name"),
)

metadef_resource_types = sa.Table(
    "metadef_resource_types", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(80), nullable=False, unique=True),
    sa.Column("protected", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
)

metadef_namespace_resource_types = sa.Table(
    "metadef_namespace_resource_types", metadata,
    # Associations are listed in the order they were made (as Glance lists them).
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("resource_type_id", sa.Integer,
              sa.ForeignKey("metadef_resource_types.id", ondelete="CASCADE"), nullable=False),
    sa.Column("namespace_id", sa.Integer, sa.ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("properties_target", sa.String(80)),
    sa.Column("prefix", sa.String(80)),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime),
    sa.UniqueConstraint("namespace_id", "resource_type_id",
                        name="uq_metadef_namespace_resource_types_pair"),
    sa.Index("ix_metadef_namespace_resource_types_namespace_id", "namespace_id"),
)
