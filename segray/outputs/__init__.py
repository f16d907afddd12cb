"""The output table of a labelling run: its schema, readers (one row per frame and model), compaction,
lease and run records. Labelling writes it; land cover, evaluation, serving and the CLI read it."""
