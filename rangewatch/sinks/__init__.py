"""Sinks: the only code that touches a writer (loggers, the tag layout, the HTML report)."""
