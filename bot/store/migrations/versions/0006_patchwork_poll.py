"""patchwork poller: cursors and seen events

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'patchwork_cursor',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('server', sa.String(length=500), nullable=False),
        sa.Column('project', sa.String(length=200), nullable=False),
        sa.Column('category', sa.String(length=40), nullable=False),
        sa.Column('since', sa.String(length=40), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('server', 'project', 'category'),
    )
    op.create_table(
        'patchwork_seen_event',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('server', sa.String(length=500), nullable=False),
        sa.Column('event_id', sa.BigInteger(), nullable=False),
        sa.Column('project', sa.String(length=200), nullable=False),
        sa.Column('category', sa.String(length=40), nullable=False),
        sa.Column('event_date', sa.String(length=40), nullable=False),
        sa.Column('outcome', sa.Text(), nullable=False),
        sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('server', 'event_id'),
    )
    op.create_index(op.f('ix_patchwork_seen_event_seen_at'), 'patchwork_seen_event', ['seen_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_patchwork_seen_event_seen_at'), table_name='patchwork_seen_event')
    op.drop_table('patchwork_seen_event')
    op.drop_table('patchwork_cursor')
