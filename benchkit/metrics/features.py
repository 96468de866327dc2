"""Feature extractors for quality metrics."""
