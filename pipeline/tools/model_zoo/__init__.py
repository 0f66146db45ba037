"""Offline, reproducible builds of the default models (see ``manifest.bootstrap``)."""
