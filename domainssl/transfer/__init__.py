"""Carry a pretrained backbone to downstream tasks (linear probe, kNN, fine-tune, ...)."""
