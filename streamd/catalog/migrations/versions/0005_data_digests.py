"""A fast digest of each image's data (BLAKE3), for nodes that verify copies fetched from peers.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_data_digests",
        sa.Column("image_id", sa.String(36), sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("os_hash_value", sa.String(128), nullable=False),
        sa.Column("blake3", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("image_data_digests")
