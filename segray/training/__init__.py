"""Training on Ray Train, one module per job: the recipe (``config``), the driver (``job``), the
per-worker epoch loop (``loop``) and its parts (``losses``, ``optim``, ``validate``, ``data``,
``augment``), where weights start (``init``), resume (``resume``, ``checkpoint``, ``session``) and
the export (``export``, ``logit_adjust``, ``calibrate``).

Modules that the driver imports (config, resume) stay light; torch/ray load where they are used.
"""
