"""hwnas profiling: measure a device into a latency table."""
