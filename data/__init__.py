"""Datasets (resolved through dataset-paths.json) and the SimCLR augmentations."""
