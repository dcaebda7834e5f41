"""SQL storage: one engine per process, declarative models, Alembic migrations."""

from rabbitry.storage.base import Base
from rabbitry.storage.database import Database, open_database

__all__ = ["Base", "Database", "open_database"]
