"""Airflow secrets backend: connections, variables and config from the vault."""
