"""Shared base builds: a build's identity key, and the build a waiting base build follows

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 19:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job') as batch_op:
        batch_op.add_column(sa.Column('build_key', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('follows_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_job_follows_id', 'job', ['follows_id'], ['id'])
        batch_op.create_index('ix_job_build_key', ['build_key'])
        batch_op.create_index('ix_job_follows_id', ['follows_id'])


def downgrade() -> None:
    with op.batch_alter_table('job') as batch_op:
        batch_op.drop_index('ix_job_follows_id')
        batch_op.drop_index('ix_job_build_key')
        batch_op.drop_constraint('fk_job_follows_id', type_='foreignkey')
        batch_op.drop_column('follows_id')
        batch_op.drop_column('build_key')
