"""Drafter training: settings (config.py), data and batches (data.py), the objective and its
loss (losses.py), and the training loop (trainer.py)."""
