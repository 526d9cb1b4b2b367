"""Evaluation: metrics, generation, base-vs-tuned comparison, and the deploy gate."""
