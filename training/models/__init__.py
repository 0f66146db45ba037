"""Training models: the seed CNN, ResNet transfer learning, imported baselines."""
