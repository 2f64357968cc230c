"""Acting on the column: the one place the daemon's cycle moves the aperture (correct.py)."""
