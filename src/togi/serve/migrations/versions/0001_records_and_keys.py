"""The store's first schema: API keys, and every record as a JSON document keyed by id, owning organization and
parent, with a sequence number for newest-first listing (the same shape as the SQLite store's)."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table("api_keys", sa.Column("hash", sa.Text, primary_key=True), sa.Column("organization", sa.Text, nullable=False),
                    sa.Column("created_at", sa.BigInteger))
    op.create_table("records", sa.Column("seq", sa.BigInteger, sa.Identity(), primary_key=True), sa.Column("kind", sa.Text, nullable=False),
                    sa.Column("id", sa.Text, nullable=False, unique=True), sa.Column("organization", sa.Text, nullable=False),
                    sa.Column("parent", sa.Text), sa.Column("body", sa.Text, nullable=False))
    op.create_index("records_by_kind", "records", ["kind", "organization", "parent"])


def downgrade() -> None:
    op.drop_index("records_by_kind", "records")
    op.drop_table("records")
    op.drop_table("api_keys")
