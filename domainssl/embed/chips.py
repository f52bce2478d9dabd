"""`domainssl embed`: pooled backbone features of every image, as a Parquet table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader

from domainssl.data.folder import ChipFolder
from domainssl.export import load_backbone, preprocess
from domainssl.infer.runner import autocast_dtype
from domainssl.io import atomic_write

MAP_POINTS = 5000


@torch.no_grad()
def embed_folder(
    run_dir: Path,
    data: Path,
    out: Path,
    map_png: Path | None = None,
    device: str = "cpu",
    precision: str = "32-true",
) -> int:
    """Write ``out`` (columns path, label, embedding) for every image under ``data``, read and
    normalized as in pretraining; labels are class-folder names (null without them).
    With ``map_png``, also a 2-D t-SNE map coloured by label. Returns the row count."""
    backbone, meta = load_backbone(run_dir)
    backbone = backbone.to(device)
    dtype = autocast_dtype(precision, torch.device(device))
    images = ChipFolder(data, size=meta.input_size, in_chans=meta.in_chans)
    features, paths, labels = [], [], []
    for batch in DataLoader(images, batch_size=128, num_workers=2):
        inputs = preprocess(meta, batch["image"]).to(device)  # (B, C, S, S)
        with torch.autocast(inputs.device.type, dtype=dtype, enabled=dtype is not None):
            features.append(backbone(inputs).float().cpu())
        paths += batch["path"]
        labels += [images.classes[i] if i >= 0 else None for i in batch["label"].tolist()]
    matrix = torch.cat(features).numpy().astype(np.float32)  # (N, D)
    table = pa.table(
        {
            "path": pa.array(paths),
            "label": pa.array(labels, type=pa.string()),
            "embedding": pa.FixedSizeListArray.from_arrays(matrix.reshape(-1), matrix.shape[1]),
        }
    )
    atomic_write(out, lambda tmp: pq.write_table(table, tmp))
    if map_png is not None:
        save_map(matrix, labels, map_png)
    return len(paths)


def save_map(features: np.ndarray, labels: list[str | None], out: Path) -> None:
    """t-SNE of (up to 5,000 seeded) embeddings, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    rng = np.random.default_rng(0)
    keep = np.sort(rng.permutation(len(features))[:MAP_POINTS])
    perplexity = min(30.0, max(2.0, (len(keep) - 1) / 3))
    points = TSNE(2, perplexity=perplexity, random_state=0).fit_transform(features[keep])
    kept_labels = [labels[i] or "unlabeled" for i in keep]
    figure, axes = plt.subplots(figsize=(7, 6))
    for name in sorted(set(kept_labels)):
        mask = np.array([label == name for label in kept_labels])
        axes.scatter(points[mask, 0], points[mask, 1], s=4, label=name)
    axes.legend(markerscale=3, fontsize=8)
    axes.set_title(f"t-SNE of {len(keep)} embeddings")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.tight_layout()
    atomic_write(out, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
