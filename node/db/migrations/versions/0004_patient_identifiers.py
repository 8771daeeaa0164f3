"""patient_identifier: the identifier values each study carried, for every process's log scrubber

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 22:50:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('patient_identifier',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('value', sa.String(length=512), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_patient_identifier_study_id_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_patient_identifier')),
    sa.UniqueConstraint('study_id', 'value', name=op.f('uq_patient_identifier_study_id_value'))
    )
    op.create_index(op.f('ix_patient_identifier_study_id'), 'patient_identifier', ['study_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_patient_identifier_study_id'), table_name='patient_identifier')
    op.drop_table('patient_identifier')
