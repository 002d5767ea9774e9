"""Example code locations shipped with runcore (the demo job lives here)."""
