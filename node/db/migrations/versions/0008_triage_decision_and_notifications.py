"""triage: the run's study-level decision, and the notification outbox with its attempts

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decision', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('decision_reason', sa.Text(), nullable=True))

    op.create_table('notification',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('channel', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('decision', sa.String(length=24), nullable=False),
    sa.Column('revision', sa.String(length=16), nullable=False),
    sa.Column('replaces_id', sa.Integer(), nullable=True),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('acknowledgement', sa.JSON(), nullable=True),
    sa.Column('last_image_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('claim_token', sa.String(length=32), nullable=True),
    sa.Column('acknowledged_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['run.id'], name=op.f('fk_notification_run_id_run')),
    sa.ForeignKeyConstraint(['replaces_id'], ['notification.id'], name=op.f('fk_notification_replaces_id_notification')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification')),
    sa.UniqueConstraint('run_id', 'channel', name=op.f('uq_notification_run_id_channel'))
    )
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.create_index('ix_notification_channel_state_due', ['channel', 'state', 'next_attempt_at'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_notification_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_notification_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('notification_attempt',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('notification_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('response', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['notification_id'], ['notification.id'],
                            name=op.f('fk_notification_attempt_notification_id_notification')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_attempt'))
    )
    with op.batch_alter_table('notification_attempt', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_notification_attempt_notification_id'), ['notification_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('notification_attempt', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_attempt_notification_id'))
    op.drop_table('notification_attempt')
    with op.batch_alter_table('notification', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_notification_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_notification_run_id'))
        batch_op.drop_index('ix_notification_channel_state_due')
    op.drop_table('notification')
    with op.batch_alter_table('run', schema=None) as batch_op:
        batch_op.drop_column('decision_reason')
        batch_op.drop_column('decision')
