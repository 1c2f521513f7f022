"""Loaded models and how they predict. Knows nothing of HTTP."""
