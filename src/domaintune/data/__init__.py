"""domaintune.data."""
