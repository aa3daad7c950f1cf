"""Triage: the result history on base branches, verdicts with their evidence, known issues, bisections

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 22:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'result_history',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('tree', sa.String(length=200), nullable=False),
        sa.Column('branch', sa.String(length=250), nullable=False),
        sa.Column('commit', sa.String(length=64), nullable=False),
        sa.Column('test_path', sa.String(length=500), nullable=False),
        sa.Column('device_class', sa.String(length=100), nullable=False),
        sa.Column('config', sa.String(length=200), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('source', sa.String(length=20), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['job.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_result_history_job_id', 'result_history', ['job_id'])
    op.create_index('ix_result_history_key', 'result_history',
                    ['tree', 'test_path', 'device_class', 'config', 'commit'])
    op.create_table(
        'test_verdict',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pipeline_id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('test_path', sa.String(length=500), nullable=False),
        sa.Column('device_class', sa.String(length=100), nullable=False),
        sa.Column('verdict', sa.String(length=20), nullable=False),
        sa.Column('evidence', sa.Text(), nullable=False),
        sa.Column('change_runs', sa.Integer(), nullable=False),
        sa.Column('change_fails', sa.Integer(), nullable=False),
        sa.Column('base_runs', sa.Integer(), nullable=False),
        sa.Column('base_fails', sa.Integer(), nullable=False),
        sa.Column('p_value', sa.Double(), nullable=True),
        sa.Column('known_issue', sa.String(length=100), nullable=True),
        sa.Column('crash_title', sa.Text(), nullable=False),
        sa.Column('cut_short', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['pipeline_id'], ['pipeline.id']),
        sa.ForeignKeyConstraint(['job_id'], ['job.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'test_path'),
    )
    op.create_index('ix_test_verdict_pipeline_id', 'test_verdict', ['pipeline_id'])
    op.create_index('ix_test_verdict_job_id', 'test_verdict', ['job_id'])
    op.create_table(
        'known_issue',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('issue_id', sa.String(length=100), nullable=False),
        sa.Column('link', sa.Text(), nullable=False),
        sa.Column('owner', sa.String(length=200), nullable=False),
        sa.Column('scope', sa.JSON(), nullable=False),
        sa.Column('test_glob', sa.String(length=500), nullable=False),
        sa.Column('log_regex', sa.Text(), nullable=False),
        sa.Column('crash_title', sa.Text(), nullable=False),
        sa.Column('expires_on', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expired_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('issue_id'),
    )
    op.create_table(
        'bisection',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('pipeline_id', sa.Integer(), nullable=False),
        sa.Column('tree', sa.String(length=200), nullable=False),
        sa.Column('branch', sa.String(length=250), nullable=False),
        sa.Column('test_path', sa.String(length=500), nullable=False),
        sa.Column('device_class', sa.String(length=100), nullable=False),
        sa.Column('good_sha', sa.String(length=64), nullable=False),
        sa.Column('bad_sha', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=20), nullable=False),
        sa.Column('steps', sa.JSON(), nullable=False),
        sa.Column('culprit_sha', sa.String(length=64), nullable=True),
        sa.Column('confidence', sa.Text(), nullable=False),
        sa.Column('message', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['pipeline_id'], ['pipeline.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_bisection_pipeline_id', 'bisection', ['pipeline_id'])


def downgrade() -> None:
    op.drop_index('ix_bisection_pipeline_id', 'bisection')
    op.drop_table('bisection')
    op.drop_table('known_issue')
    op.drop_index('ix_test_verdict_job_id', 'test_verdict')
    op.drop_index('ix_test_verdict_pipeline_id', 'test_verdict')
    op.drop_table('test_verdict')
    op.drop_index('ix_result_history_key', 'result_history')
    op.drop_index('ix_result_history_job_id', 'result_history')
    op.drop_table('result_history')
