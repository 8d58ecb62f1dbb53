"""End-to-end tests on real processes (``-m e2e`` selects them; the default run includes
them)."""
