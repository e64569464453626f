"""Training engines (OpenMP's wait policy is set in s4d/__init__.py, before torch loads)."""
