"""Inference over whole large images: tile grids, blending, streamed GeoTIFF output."""
