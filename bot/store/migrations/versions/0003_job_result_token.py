"""job result token, test result caveat

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 21:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('result_token_hash', sa.String(length=64), nullable=True))
    with op.batch_alter_table('test_result', schema=None) as batch_op:
        batch_op.add_column(sa.Column('caveat', sa.Text(), nullable=False, server_default=''))


def downgrade() -> None:
    with op.batch_alter_table('test_result', schema=None) as batch_op:
        batch_op.drop_column('caveat')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_column('result_token_hash')
