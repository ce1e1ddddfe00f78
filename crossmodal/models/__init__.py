"""Encoders, attention, fusion and the full model."""
