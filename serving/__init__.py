"""Serving: the BentoML service (service.py), its framework-free prediction logic (inference.py) and the
model store helpers (store.py). See serving/README.md."""
