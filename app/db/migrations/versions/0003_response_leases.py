"""Background responses across replicas: a lease on each one being generated (a crashed
replica's responses are seen to be lost) and a cancellation request any replica can make.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE ... ADD COLUMN on both databases: the table is not rebuilt.
    op.add_column("responses", sa.Column("lease_until", sa.BigInteger, nullable=True))
    op.add_column(
        "responses",
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("responses") as batch:
        batch.drop_column("cancel_requested")
        batch.drop_column("lease_until")
