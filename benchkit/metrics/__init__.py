"""benchkit subpackage."""
