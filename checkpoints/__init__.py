"""Checkpoints: our own format (native), the authors' released formats (released), atomic
writes, and rebuilding a ready-to-evaluate model from either (loading)."""
