"""The labelling pipeline, one module per stage: read -> predict -> write, assembled by ``job``."""
