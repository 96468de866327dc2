"""benchkit command line."""
