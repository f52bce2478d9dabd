"""Key layouts of weight files, mapped to timm's names: timm itself, torchvision (ResNets
share timm's names), Lightning / DDP prefixes, and Hugging Face ViT and DINOv2 models.

A file whose keys match none of them is an error listing the first keys that did not fit.
"""

from __future__ import annotations

import re

import torch

from domainssl.errors import DomainSSLError

PREFIXES = ("state_dict.", "module.", "model.", "backbone.", "encoder.", "vit.", "dinov2.")
"""Wrappers around a backbone's keys: Lightning modules, DDP, HF task heads, our outputs."""

HF_BLOCK = {  # Hugging Face (ViTModel / Dinov2Model) block key -> timm VisionTransformer key
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.register_tokens": "reg_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
QKV = ("query", "key", "value")


def strip_prefixes(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes while that makes more keys match ``wanted``."""
    best = state
    for _ in range(3):  # nested wrappers (a Lightning module around a DDP module ...)
        for prefix in PREFIXES:
            stripped = {k.removeprefix(prefix): v for k, v in best.items() if k.startswith(prefix)}
            if len(set(stripped) & wanted) > len(set(best) & wanted):
                best = stripped
    return best


def hf_vit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ViT / DINOv2 state dict in timm's VisionTransformer names (query, key
    and value projections joined into ``qkv``; DINOv2's mask token dropped)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in HF_TOP:
            out[HF_TOP[key]] = value
            continue
        found = HF_LAYER.match(key)
        if found is None:
            continue  # mask_token, pooler: nothing timm's backbone holds
        block, inner, kind = found.groups()
        part = inner.removeprefix("attention.attention.")
        if part in QKV:
            qkv.setdefault((block, kind), {})[part] = value
        elif inner in HF_BLOCK:
            suffix = "" if kind == "lambda1" else f".{kind}"
            out[f"blocks.{block}.{HF_BLOCK[inner]}{suffix}"] = value
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts[name] for name in QKV])
    return out


def to_timm_layout(state: dict[str, torch.Tensor], wanted: set[str], source: str) -> dict:
    """``state`` in the key names of a timm model whose keys are ``wanted``; an error naming
    the first keys that fit no known layout."""
    candidates = [strip_prefixes(state, wanted)]
    if any(".attention.attention." in key for key in state):
        candidates.append(
            strip_prefixes(hf_vit_to_timm(strip_prefixes(state, set(HF_TOP))), wanted)
        )
    best = max(candidates, key=lambda c: len(set(c) & wanted))
    missing = sorted(wanted - set(best))
    if missing:
        unmatched = sorted(set(best) - wanted)[:8]
        raise DomainSSLError(
            f"{source} does not match the backbone in any known layout (timm, torchvision, "
            f"Hugging Face ViT/DINOv2): {len(missing)} of its weights are missing, e.g. "
            f"{missing[:5]}; keys that fit nothing: {unmatched}. Check model.backbone."
        )
    return {key: best[key] for key in wanted}
