"""The path engine: one record per peer, one endpoint decision per peer, driven by events."""
