"""Checks read the probe's records and yield diagnostics; they never run the model."""
