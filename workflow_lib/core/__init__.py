"""What every stage shares: models, table schemas and atomic writes, statistics, code digests, config checks."""
