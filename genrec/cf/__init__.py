"""Collaborative-filtering models: SASRec and LightGCN, whose item (and user) embeddings feed the
tokenizers and whose rankings, with item popularity, are the baselines every method must beat."""
