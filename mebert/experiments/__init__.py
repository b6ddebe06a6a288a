"""Experiments built from the configs in configs/experiments/: drivers and their reports."""
