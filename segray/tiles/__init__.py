"""Frames larger than a model's input: sliding windows, blending, and georeferencing (world files)."""
