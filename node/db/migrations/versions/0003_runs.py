"""runs: the run queue and audit, inputs, outputs; study generations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 00:59:30.880217
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('predecessor_id', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.Text(), nullable=False),
    sa.Column('routing', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('not_before', sa.DateTime(timezone=True), nullable=False),
    sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('worker', sa.String(length=128), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('input_digest', sa.String(length=64), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('selection', sa.JSON(), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=True),
    sa.Column('model_version', sa.String(length=32), nullable=True),
    sa.Column('weights_sha256', sa.String(length=64), nullable=True),
    sa.Column('findings', sa.JSON(), nullable=False),
    sa.Column('first_instance_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_instance_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ready_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('inference_started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('inference_ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reports_built_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['predecessor_id'], ['run.id'], name=op.f('fk_run_predecessor_id_run')),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_run_study_id_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run')),
    sa.UniqueConstraint('study_id', 'model', 'version', name=op.f('uq_run_study_id_model_version'))
    )
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.create_index('ix_run_status_not_before', ['status', 'not_before'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_run_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('run_output',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_output_run_id_run')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_output')),
    sa.UniqueConstraint('sop_instance_uid', name=op.f('uq_run_output_sop_instance_uid'))
    )
    with op.batch_alter_table('run_output', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_output_run_id'), ['run_id'], unique=False)

    op.create_table('run_input',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instance.id'], name=op.f('fk_run_input_instance_id_instance')),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_run_input_run_id_run')),
    sa.PrimaryKeyConstraint('run_id', 'instance_id', name=op.f('pk_run_input'))
    )
    with op.batch_alter_table('run_input', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_run_input_instance_id'), ['instance_id'], unique=False)

    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.add_column(sa.Column('generation', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('settled_generation', sa.Integer(), server_default='0', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('study', schema=None) as batch_op:
        batch_op.drop_column('settled_generation')
        batch_op.drop_column('generation')

    with op.batch_alter_table('run_input', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_input_instance_id'))

    op.drop_table('run_input')
    with op.batch_alter_table('run_output', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_output_run_id'))

    op.drop_table('run_output')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_run_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_run_study_id'))
        batch_op.drop_index('ix_run_status_not_before')

    op.drop_table('run')
