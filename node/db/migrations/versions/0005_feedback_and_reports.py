"""feedback, study reports and labels, run input facts

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 11:30:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('study_report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('control_id', sa.String(length=64), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('result_status', sa.String(length=4), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_study_report_study_id_study')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_study_report'))
    )
    with op.batch_alter_table('study_report', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_study_report_received_at'), ['received_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_report_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_study_report_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('report_label',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=False),
    sa.Column('finding_type', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=12), nullable=False),
    sa.Column('span_start', sa.Integer(), nullable=False),
    sa.Column('span_end', sa.Integer(), nullable=False),
    sa.Column('evidence', sa.Text(), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['report_id'], ['study_report.id'], name=op.f('fk_report_label_report_id_study_report')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_report_label'))
    )
    with op.batch_alter_table('report_label', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_label_report_id'), ['report_id'], unique=False)

    op.create_table('inbound_document',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('examined_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instance.id'], name=op.f('fk_inbound_document_instance_id_instance')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbound_document')),
    sa.UniqueConstraint('instance_id', name=op.f('uq_inbound_document_instance_id'))
    )
    with op.batch_alter_table('inbound_document', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbound_document_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('feedback',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('reader', sa.String(length=256), nullable=False),
    sa.Column('reader_id', sa.String(length=64), nullable=True),
    sa.Column('content_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('current', sa.Boolean(), nullable=False),
    sa.Column('superseded_by_id', sa.Integer(), nullable=True),
    sa.Column('confirmed', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('edited', sa.Integer(), nullable=False),
    sa.Column('missed', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['instance_id'], ['instance.id'], name=op.f('fk_feedback_instance_id_instance')),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_feedback_run_id_run')),
    sa.ForeignKeyConstraint(['study_id'], ['study.id'], name=op.f('fk_feedback_study_id_study')),
    sa.ForeignKeyConstraint(['superseded_by_id'], ['feedback.id'], name=op.f('fk_feedback_superseded_by_id_feedback')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback')),
    sa.UniqueConstraint('instance_id', name=op.f('uq_feedback_instance_id'))
    )
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_feedback_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('feedback_item',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('feedback_id', sa.Integer(), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('finding_index', sa.Integer(), nullable=True),
    sa.Column('matched_by', sa.String(length=16), nullable=True),
    sa.Column('label', sa.String(length=64), nullable=True),
    sa.Column('centre_mm', sa.JSON(), nullable=True),
    sa.Column('diameter_mm', sa.Float(), nullable=True),
    sa.Column('regions', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['feedback_id'], ['feedback.id'], name=op.f('fk_feedback_item_feedback_id_feedback')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_feedback_item'))
    )
    with op.batch_alter_table('feedback_item', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_feedback_item_feedback_id'), ['feedback_id'], unique=False)

    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('input_facts', sa.JSON(), server_default='{}', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_column('input_facts')

    with op.batch_alter_table('feedback_item', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_item_feedback_id'))

    op.drop_table('feedback_item')
    with op.batch_alter_table('feedback', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_feedback_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_feedback_study_id'))
        batch_op.drop_index(batch_op.f('ix_feedback_run_id'))

    op.drop_table('feedback')
    with op.batch_alter_table('inbound_document', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_document_study_instance_uid'))

    op.drop_table('inbound_document')
    with op.batch_alter_table('report_label', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_label_report_id'))

    op.drop_table('report_label')
    with op.batch_alter_table('study_report', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_study_report_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_study_report_study_id'))
        batch_op.drop_index(batch_op.f('ix_study_report_received_at'))

    op.drop_table('study_report')
