"""Scoring model artifacts on a labelled split: metrics, confusion picture, overlays, comparisons."""
