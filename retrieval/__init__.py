"""Retrieval at scale, in two stages: global embeddings searched with FAISS shortlist K items per
query (`search`), the dimension-level head re-ranks them (`two_stage`), and collections larger than
memory are indexed once on disk (`collection`)."""
