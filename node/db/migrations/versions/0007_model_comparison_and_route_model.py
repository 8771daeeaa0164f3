"""model comparisons and route model changes (promotion, rollback)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('model_comparison',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('route', sa.String(length=64), nullable=False),
    sa.Column('live_model', sa.String(length=256), nullable=False),
    sa.Column('live_name', sa.String(length=64), nullable=False),
    sa.Column('live_version', sa.String(length=32), nullable=False),
    sa.Column('live_weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('candidate_model', sa.String(length=256), nullable=False),
    sa.Column('candidate_name', sa.String(length=64), nullable=False),
    sa.Column('candidate_version', sa.String(length=32), nullable=False),
    sa.Column('candidate_weights_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('studies', sa.Integer(), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=False),
    sa.Column('report_path', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_comparison'))
    )
    with op.batch_alter_table('model_comparison', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_comparison_route'), ['route'], unique=False)

    op.create_table('route_model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('route', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('change', sa.String(length=16), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('replaced', sa.String(length=256), nullable=False),
    sa.Column('comparison_id', sa.Integer(), nullable=True),
    sa.Column('undoes_id', sa.Integer(), nullable=True),
    sa.Column('by', sa.String(length=128), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['comparison_id'], ['model_comparison.id'],
                            name=op.f('fk_route_model_comparison_id_model_comparison')),
    sa.ForeignKeyConstraint(['undoes_id'], ['route_model.id'], name=op.f('fk_route_model_undoes_id_route_model')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_route_model')),
    sa.UniqueConstraint('route', 'seq', name=op.f('uq_route_model_route_seq'))
    )
    with op.batch_alter_table('route_model', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_route_model_route'), ['route'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('route_model', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_route_model_route'))
    op.drop_table('route_model')
    with op.batch_alter_table('model_comparison', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_comparison_route'))
    op.drop_table('model_comparison')
