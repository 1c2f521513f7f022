"""Training, evaluation and the description of a model in its metadata."""
