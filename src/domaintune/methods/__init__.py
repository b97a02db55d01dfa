"""domaintune.methods."""
