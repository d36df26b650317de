"""Everything evaluation: encode once, score in shards, vectorised rank metrics, protocols."""
