"""Reusable blocks that models compose: pooled embeddings, MLPs."""
