"""Fakes for unit tests only (e.g. a fake ``tensorrt`` module: TensorRT cannot be installed here)."""
