"""The job store: one relational schema (SQLAlchemy Core) for SQLite and PostgreSQL."""
