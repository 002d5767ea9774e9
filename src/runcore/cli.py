"""The ``runcore`` command (placeholder replaced below)."""
