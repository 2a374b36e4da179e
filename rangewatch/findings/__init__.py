"""Findings: the one result type, its builders and the run's findings log."""
