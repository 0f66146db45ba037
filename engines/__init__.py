"""Emotion inference engines behind one contract (see engines.base)."""
