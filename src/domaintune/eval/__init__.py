"""domaintune.eval."""
