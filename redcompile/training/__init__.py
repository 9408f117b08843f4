"""Drafter training: data (data.py) and the training loop (trainer.py)."""
