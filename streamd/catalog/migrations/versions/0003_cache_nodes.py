"""Which node caches which image, so that nodes sharing a catalogue serve each other.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cache_nodes",
        sa.Column("node_id", sa.String(255), primary_key=True),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "node_cached_images",
        sa.Column("node_id", sa.String(255), sa.ForeignKey("cache_nodes.node_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("image_id", sa.String(36), primary_key=True),
    )
    op.create_index("ix_node_cached_images_image_id", "node_cached_images", ["image_id"])


def downgrade() -> None:
    op.drop_table("node_cached_images")
    op.drop_table("cache_nodes")
