"""Store-backed test queue: job priority, fair key and sequence, quota key; queue windows

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 13:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job') as batch:
        batch.add_column(sa.Column('priority', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('fair_key', sa.String(length=420), nullable=False, server_default=''))
        batch.add_column(sa.Column('fair_seq', sa.BigInteger(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('quota_key', sa.String(length=250), nullable=True))
    op.create_index('ix_job_pick', 'job', ['queue', 'state', sa.text('priority DESC'), 'fair_seq', 'id'])
    op.create_index('ix_job_fair', 'job', ['queue', 'fair_key', 'fair_seq'])
    op.create_index('ix_job_quota', 'job', ['quota_key', 'state'])
    op.create_table(
        'queue_window',
        sa.Column('queue', sa.String(length=100), nullable=False),
        sa.Column('capacity', sa.Integer(), nullable=False),
        sa.Column('virtual_time', sa.BigInteger(), nullable=False),
        sa.Column('offline', sa.Boolean(), nullable=False),
        sa.Column('offline_reason', sa.Text(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('queue'),
    )


def downgrade() -> None:
    op.drop_table('queue_window')
    op.drop_index('ix_job_quota', table_name='job')
    op.drop_index('ix_job_fair', table_name='job')
    op.drop_index('ix_job_pick', table_name='job')
    with op.batch_alter_table('job') as batch:
        batch.drop_column('quota_key')
        batch.drop_column('fair_seq')
        batch.drop_column('fair_key')
        batch.drop_column('priority')
