"""Classification transfer: linear probe, k-NN and fine-tuning on labeled images."""
