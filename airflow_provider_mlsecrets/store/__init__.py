"""Store: SQLAlchemy models, engines and Alembic migrations. Holds ciphertext only."""
