"""Inference over whole-slide images: tissue tiles only, pyramidal heatmap and tables."""
