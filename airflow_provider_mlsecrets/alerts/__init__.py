"""Alerts derived from the audit trail, delivered through Airflow's notifiers
(docs/alerts.md). The vault's part is :mod:`..service.alerts`; here are the rules, the
evaluator, the delivery and the background runner."""
