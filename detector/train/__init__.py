"""Training: a YAML config, a synthetic-lesion sample pool, the loop with checkpoints, and the run that ships a card."""
