"""Dataset readers (precomputed regions, Karpathy JSON + images), caption tokenisation, batching."""
