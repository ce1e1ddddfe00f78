"""Datasets, audio features and the input pipeline."""
