"""Land-cover export: per-region, per-date class areas and shares from labelling jobs' stats Parquet."""
