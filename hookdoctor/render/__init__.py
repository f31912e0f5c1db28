"""Showing a report: the rich terminal report, the model summary and progress lines."""
