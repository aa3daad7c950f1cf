"""change head seen, pipeline requested by and notes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('change', schema=None) as batch_op:
        batch_op.add_column(sa.Column('head_sha', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('head_seen_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('pipeline', schema=None) as batch_op:
        batch_op.add_column(sa.Column('requested_by', sa.String(length=200), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('notes', sa.JSON(), nullable=False, server_default='[]'))


def downgrade() -> None:
    with op.batch_alter_table('pipeline', schema=None) as batch_op:
        batch_op.drop_column('notes')
        batch_op.drop_column('requested_by')
    with op.batch_alter_table('change', schema=None) as batch_op:
        batch_op.drop_column('head_seen_at')
        batch_op.drop_column('head_sha')
