"""dimmatch: dimension-level image-text matching (ESL-CLIP, ESL-region, X-Dim)."""

__version__ = "0.1.0"
