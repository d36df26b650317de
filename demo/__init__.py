"""Offline demo: small datasets in the real on-disk formats and tiny BERT / CLIP backbones."""
