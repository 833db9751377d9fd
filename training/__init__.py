"""Training, synthetic data and evaluation for the kpvid models."""
