"""Domain loaders: each yields sample dicts ``{"image": (C, H, W) tensor, "label": int, ...}``."""
