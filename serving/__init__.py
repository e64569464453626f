"""Serving: the BentoML service (service.py), its framework-free prediction logic (inference.py) and its
request limits (http.py, inputs.py, settings.py). The model store is s4d.registry's. See serving/README.md."""
