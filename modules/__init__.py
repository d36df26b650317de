"""Encoders, similarity heads and losses; `build_model` assembles them from a config."""
