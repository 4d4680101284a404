"""Indexes the image list pages along: by name (as listed, NULL as ''), then created_at and id.

One in a single direction (``sort=name:asc`` or ``name:desc``, whose tiebreakers follow the one
direction given), one with the tiebreakers the other way (``sort=name:asc,created_at:desc``, the
CLI's and Horizon's). With them a page sorted by name reads its rows in index order from the
marker on instead of sorting every visible image.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_images_name_created_at_id", "images",
                    [sa.text("coalesce(name, '')"), "created_at", "id"])
    op.create_index("ix_images_name_created_at_id_desc", "images",
                    [sa.text("coalesce(name, '')"), sa.text("created_at DESC"), sa.text("id DESC")])


def downgrade() -> None:
    op.drop_index("ix_images_name_created_at_id_desc", "images")
    op.drop_index("ix_images_name_created_at_id", "images")
