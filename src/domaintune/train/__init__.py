"""domaintune.train."""
