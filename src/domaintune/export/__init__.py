"""domaintune.export."""
