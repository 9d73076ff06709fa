"""never reuse an erased account's id

Revision ID: 5c0a3e9d7b21
Revises: 10268737b988
Create Date: 2026-12-02 09:00:00.000000

SQLite gives a new row the highest id in use plus one, so after the newest
account is erased the next signup got its id, and with it every row kept by
id (privacy requests, audit trail, notice records, mail). AUTOINCREMENT makes
SQLite never hand an id out twice; PostgreSQL's sequence never did. The
counter starts above every account id still referenced anywhere, so an id
erased before this revision is not handed out either.
"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '5c0a3e9d7b21'
down_revision = '10268737b988'
branch_labels = None
depends_on = None

# Every column that keeps an account's id after the account is gone.
KEPT_IDS = [("users", "id"), ("privacy_requests", "user_id"), ("audit_events", "actor_id"),
            ("audit_events", "subject_id"), ("incident_notices", "user_id"), ("policy_notices", "user_id"),
            ("outbox_messages", "user_id"), ("usage_quarantine", "user_id")]


def upgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table('users', recreate='always', table_kwargs={'sqlite_autoincrement': True}):
        pass
    highest = " UNION ALL ".join(f"SELECT max({col}) AS m FROM {table}" for table, col in KEPT_IDS)
    op.execute("DELETE FROM sqlite_sequence WHERE name = 'users'")
    op.execute(f"INSERT INTO sqlite_sequence (name, seq) SELECT 'users', coalesce(max(m), 0) FROM ({highest})")


def downgrade():
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table('users', recreate='always', table_kwargs={'sqlite_autoincrement': False}):
        pass
