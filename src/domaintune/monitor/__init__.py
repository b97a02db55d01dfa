"""domaintune.monitor."""
