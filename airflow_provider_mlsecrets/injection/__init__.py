"""Credential injection: references in DAGs, values only inside the running task."""
