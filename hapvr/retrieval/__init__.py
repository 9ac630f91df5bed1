"""Search over an indexed video collection."""
