"""domaintune.serve."""
