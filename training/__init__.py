"""Datasets, models and the train / evaluate / export commands."""
