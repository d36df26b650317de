"""The local retrieval page and JSON API of tools/serve.py (service: the model and the index; app: the routes)."""
