"""The chat window's widgets, one per file."""
