"""Training on Ray Train: config, data, augmentation, loop, metrics, checkpoints, export, curves.

Modules that the driver imports (config, metrics) stay light; torch/ray load where they are used.
"""
