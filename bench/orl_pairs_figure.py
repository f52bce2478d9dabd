"""Draw ORL's mined inter-image RoI pairs from a finished ORL run on a chip folder.

Each row: the image with its RoI boxed, the RoI, the partner RoI, and the neighbour image
with the partner boxed. Rows are random mined pairs (not the best ones), so the figure
shows what stage 3 actually trains on.

    python bench/orl_pairs_figure.py bench/out/orl_quality/orl-000800 \
        --data ../shared/data/eurosat_rgb5 --out bench/figures/orl_pairs.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image

from domainssl.data.folder import ChipFolder
from domainssl.methods.orl.pairs import load_pairs
from domainssl.views.crops import resample
from domainssl.views.object_crops import box_affine, draw_boxes
from domainssl.views.render import to_display

SHOW = 96  # px per tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("bench/figures/orl_pairs.png"))
    args = parser.parse_args()
    pairs = load_pairs(args.run / "stage2" / "pairs")
    chips = ChipFolder(args.data, size=64)
    rows = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0))[: args.rows]
    tiles = []
    for row in rows.tolist():
        i, j = int(pairs.image[row]), int(pairs.neighbor[row])
        images = torch.stack([chips[i]["image"], chips[j]["image"]]).float()  # (2, 3, 64, 64)
        boxes = torch.from_numpy(pairs.box[[row]]), torch.from_numpy(pairs.neighbor_box[[row]])
        box = torch.cat(boxes)  # (2, 4)
        crops = resample(images, box_affine(box), SHOW)  # (2, 3, SHOW, SHOW)
        whole = F.interpolate(draw_boxes(images, box), size=(SHOW, SHOW), mode="nearest")
        tiles += [whole[0], crops[0], crops[1], whole[1]]
        names = (chips.files[i].parent.name, chips.files[j].parent.name)
        print(f"pair {row}: {names[0]} -> {names[1]}, cosine {pairs.similarity[row]:.3f}")
    shown = to_display(torch.stack(tiles) / 255.0, [0, 1, 2])
    grid = make_grid(shown, nrow=4, padding=2, pad_value=1.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, args.out)
    print(f"Wrote {args.out}")


if __name__ == "__main__":
    main()
