"""FAISS item indexes and batch candidate generation."""
