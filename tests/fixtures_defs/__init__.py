"""Importable user modules that the code-location and spawn-executor tests load."""
