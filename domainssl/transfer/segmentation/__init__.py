"""Segmentation transfer: a UNet-style decoder on the pretrained encoder, tiled evaluation."""
