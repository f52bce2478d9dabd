"""Inference over large GeoTIFF scenes: streamed, resumable, georeferenced output."""
