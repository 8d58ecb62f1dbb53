"""The rotators shipped with the provider (registered as entry points in pyproject.toml)."""
