"""Incomplete test jobs' earlier attempts; places' consecutive infrastructure failures and health checks

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 15:45:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_attempt',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('place', sa.String(length=200), nullable=True),
        sa.Column('result', sa.String(length=20), nullable=True),
        sa.Column('error_code', sa.String(length=40), nullable=True),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('log_digest', sa.String(length=64), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['job.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'number'),
    )
    op.create_index('ix_job_attempt_job_id', 'job_attempt', ['job_id'])
    op.create_table(
        'place_health',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('device_class', sa.String(length=100), nullable=False),
        sa.Column('place', sa.String(length=200), nullable=False),
        sa.Column('consecutive_failures', sa.Integer(), nullable=False),
        sa.Column('last_fault', sa.Text(), nullable=False),
        sa.Column('offline', sa.Boolean(), nullable=False),
        sa.Column('offline_reason', sa.Text(), nullable=False),
        sa.Column('check_job_id', sa.Integer(), nullable=True),
        sa.Column('last_check_result', sa.String(length=20), nullable=True),
        sa.Column('last_check_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('recheck_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['check_job_id'], ['job.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('device_class', 'place'),
    )


def downgrade() -> None:
    op.drop_table('place_health')
    op.drop_index('ix_job_attempt_job_id', table_name='job_attempt')
    op.drop_table('job_attempt')
