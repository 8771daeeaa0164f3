"""foundation: association, study, series, instance, audit_event

Revision ID: 0001
Revises: 
Create Date: 2026-11-24 22:30:18.936564
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('association',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('calling_ae', sa.String(length=16), nullable=False),
    sa.Column('called_ae', sa.String(length=16), nullable=False),
    sa.Column('peer_host', sa.String(length=64), nullable=False),
    sa.Column('peer_port', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('reject_reason', sa.Text(), nullable=True),
    sa.Column('instances_stored', sa.Integer(), nullable=False),
    sa.Column('instances_duplicate', sa.Integer(), nullable=False),
    sa.Column('instances_failed', sa.Integer(), nullable=False),
    sa.Column('bytes_stored', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_association'))
    )
    op.create_table('study',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=True),
    sa.Column('study_description', sa.String(length=64), nullable=True),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study')),
    sa.UniqueConstraint('study_instance_uid', name=op.f('uq_study_study_instance_uid'))
    )
    op.create_table('audit_event',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('association_id', sa.Integer(), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('status', sa.Integer(), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['association_id'], ['association.id'], name=op.f('fk_audit_event_association_id_association')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_event'))
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_event_association_id'), ['association_id'], unique=False)
        batch_op.create_index('ix_audit_event_kind_at', ['kind', 'at'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('series_number', sa.Integer(), nullable=True),
    sa.Column('series_description', sa.String(length=64), nullable=True),
    sa.Column('body_part', sa.String(length=16), nullable=True),
    sa.Column('first_received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_series_study_id_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_series')),
    sa.UniqueConstraint('series_instance_uid', name=op.f('uq_series_series_instance_uid'))
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_study_id'), ['study_id'], unique=False)

    op.create_table('instance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('association_id', sa.Integer(), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.Integer(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('path', sa.Text(), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('is_current', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['association_id'], ['association.id'], name=op.f('fk_instance_association_id_association')),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], name=op.f('fk_instance_series_id_series')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_instance')),
    sa.UniqueConstraint('sop_instance_uid', 'sha256', name=op.f('uq_instance_sop_instance_uid_sha256'))
    )
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instance_association_id'), ['association_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_series_id'), ['series_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_sop_instance_uid'), ['sop_instance_uid'], unique=False)
        batch_op.create_index(batch_op.f('ix_instance_received_at'), ['received_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instance_received_at'))
        batch_op.drop_index(batch_op.f('ix_instance_sop_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_instance_series_id'))
        batch_op.drop_index(batch_op.f('ix_instance_association_id'))

    op.drop_table('instance')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_id'))

    op.drop_table('series')
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_kind_at')
        batch_op.drop_index(batch_op.f('ix_audit_event_association_id'))

    op.drop_table('audit_event')
    op.drop_table('study')
    op.drop_table('association')
