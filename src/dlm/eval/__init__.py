"""Evaluation: metrics (ROUGE) and held-out likelihood (ELBO perplexity)."""
