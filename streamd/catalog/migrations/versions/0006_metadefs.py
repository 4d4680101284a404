"""The metadata definitions catalogue (metadefs): namespaces, objects, properties, tags, resource types.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _namespace_fk() -> sa.Column:
    return sa.Column("namespace_id", sa.Integer, sa.ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
                     nullable=False)


def _times() -> list[sa.Column]:
    return [sa.Column("created_at", sa.DateTime, nullable=False),
            sa.Column("updated_at", sa.DateTime)]


def upgrade() -> None:
    op.create_table(
        "metadef_namespaces",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("namespace", sa.String(80), nullable=False),
        sa.Column("display_name", sa.String(80)),
        sa.Column("description", sa.Text),
        sa.Column("visibility", sa.String(32)),
        sa.Column("protected", sa.Boolean),
        sa.Column("owner", sa.String(255)),
        *_times(),
        sa.UniqueConstraint("namespace", name="uq_metadef_namespaces_namespace"),
    )
    op.create_index("ix_metadef_namespaces_owner", "metadef_namespaces", ["owner"])
    op.create_table(
        "metadef_objects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _namespace_fk(),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("required_json", sa.Text, nullable=False),
        sa.Column("properties_json", sa.Text, nullable=False),
        *_times(),
        sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_objects_namespace_id_name"),
    )
    op.create_table(
        "metadef_properties",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _namespace_fk(),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("schema_json", sa.Text, nullable=False),
        *_times(),
        sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_properties_namespace_id_name"),
    )
    op.create_table(
        "metadef_tags",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _namespace_fk(),
        sa.Column("name", sa.String(80), nullable=False),
        *_times(),
        sa.UniqueConstraint("namespace_id", "name", name="uq_metadef_tags_namespace_id_name"),
    )
    op.create_table(
        "metadef_resource_types",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(80), nullable=False),
        sa.Column("protected", sa.Boolean, nullable=False),
        *_times(),
        sa.UniqueConstraint("name", name="uq_metadef_resource_types_name"),
    )
    op.create_table(
        "metadef_namespace_resource_types",
        # Associations are listed in the order they were made (as Glance lists them).
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("resource_type_id", sa.Integer,
                  sa.ForeignKey("metadef_resource_types.id", ondelete="CASCADE"), nullable=False),
        sa.Column("namespace_id", sa.Integer, sa.ForeignKey("metadef_namespaces.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("properties_target", sa.String(80)),
        sa.Column("prefix", sa.String(80)),
        *_times(),
        sa.UniqueConstraint("namespace_id", "resource_type_id",
                            name="uq_metadef_namespace_resource_types_pair"),
    )
    op.create_index("ix_metadef_namespace_resource_types_namespace_id", "metadef_namespace_resource_types",
                    ["namespace_id"])


def downgrade() -> None:
    for table in ("metadef_namespace_resource_types", "metadef_resource_types", "metadef_tags",
                  "metadef_properties", "metadef_objects", "metadef_namespaces"):
        op.drop_table(table)
