"""forge changes, approvals, checks

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 09:58:08.119940
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('approval',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('change_id', sa.Integer(), nullable=False),
    sa.Column('sha', sa.String(length=64), nullable=False),
    sa.Column('approver', sa.String(length=200), nullable=False),
    sa.Column('hardware', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['change_id'], ['change.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('approval', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approval_change_id'), ['change_id'], unique=False)

    op.create_table('forge_check',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('pipeline_id', sa.Integer(), nullable=True),
    sa.Column('forge', sa.String(length=40), nullable=False),
    sa.Column('repo', sa.String(length=200), nullable=False),
    sa.Column('head_sha', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=250), nullable=False),
    sa.Column('check_id', sa.BigInteger(), nullable=True),
    sa.Column('sent_rank', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['job.id'], ),
    sa.ForeignKeyConstraint(['pipeline_id'], ['pipeline.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('job_id')
    )
    with op.batch_alter_table('forge_check', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_forge_check_pipeline_id'), ['pipeline_id'], unique=False)

    with op.batch_alter_table('change', schema=None) as batch_op:
        batch_op.add_column(sa.Column('forge_repo', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('number', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('installation_id', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('author_trusted', sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column('state', sa.String(length=20), nullable=False, server_default='open'))

    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('task_id', sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column('reused_from_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key('fk_job_reused_from_id', 'job', ['reused_from_id'], ['id'])

    with op.batch_alter_table('pipeline', schema=None) as batch_op:
        batch_op.add_column(sa.Column('kind', sa.String(length=20), nullable=False, server_default='pre-merge'))
        batch_op.add_column(sa.Column('rerun_of_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tier', sa.String(length=20), nullable=False, server_default='hardware'))
        batch_op.create_foreign_key('fk_pipeline_rerun_of_id', 'pipeline', ['rerun_of_id'], ['id'])



def downgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_constraint('fk_job_reused_from_id', type_='foreignkey')
        batch_op.drop_column('reused_from_id')
        batch_op.drop_column('task_id')

    with op.batch_alter_table('pipeline', schema=None) as batch_op:
        batch_op.drop_constraint('fk_pipeline_rerun_of_id', type_='foreignkey')
        batch_op.drop_column('tier')
        batch_op.drop_column('rerun_of_id')
        batch_op.drop_column('kind')

    with op.batch_alter_table('change', schema=None) as batch_op:
        batch_op.drop_column('state')
        batch_op.drop_column('author_trusted')
        batch_op.drop_column('installation_id')
        batch_op.drop_column('number')
        batch_op.drop_column('forge_repo')

    with op.batch_alter_table('forge_check', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_forge_check_pipeline_id'))

    op.drop_table('forge_check')
    with op.batch_alter_table('approval', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_approval_change_id'))

    op.drop_table('approval')
