"""CI submissions (OIDC) and their read tokens

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 12:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'ci_submission',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('issuer', sa.String(length=500), nullable=False),
        sa.Column('jti', sa.String(length=200), nullable=False),
        sa.Column('identity', sa.Text(), nullable=False),
        sa.Column('tree', sa.String(length=200), nullable=False),
        sa.Column('tier', sa.String(length=20), nullable=False),
        sa.Column('base_branch', sa.String(length=250), nullable=False),
        sa.Column('request', sa.JSON(), nullable=False),
        sa.Column('claims', sa.JSON(), nullable=False),
        sa.Column('pipeline_id', sa.Integer(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['pipeline_id'], ['pipeline.id']),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('issuer', 'jti'),
    )
    op.create_table(
        'ci_submission_reader',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('submission_id', sa.Integer(), nullable=False),
        sa.Column('token_sha256', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['submission_id'], ['ci_submission.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(op.f('ix_ci_submission_reader_submission_id'), 'ci_submission_reader', ['submission_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_ci_submission_reader_submission_id'), table_name='ci_submission_reader')
    op.drop_table('ci_submission_reader')
    op.drop_table('ci_submission')
