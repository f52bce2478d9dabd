"""Backbones (timm by name, any band count) and projection/prediction heads."""
