"""Seeded generators of tiny RGB-infrared re-ID sets in the SYSU-MM01, RegDB and generic
on-disk layouts. A person is a figure of four coloured body parts (head, torso, legs, feet)
whose colours and texture depend on the identity; its infrared image is a weighted band sum
plus noise, stored with one channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BOUNDS = (0.0, 0.2, 0.55, 0.9, 1.0)
"""Row fractions where the body parts (head, torso, legs, feet) start and end."""
IR_WEIGHTS = np.array([0.5, 0.3, 0.2])


def person(rng: np.random.Generator, pid: int, size: tuple[int, int] = (32, 16)) -> np.ndarray:
    """An RGB person (H, W, 3) uint8: identity-coloured parts on a noisy background."""
    height, width = size
    colours = np.random.default_rng(1000 + pid).integers(30, 226, (4, 3))
    image = rng.normal(110, 25, (height, width, 3))
    shift = int(rng.integers(-width // 8, width // 8 + 1))
    left, right = width // 4 + shift, 3 * width // 4 + shift
    texture = 20 * np.sin(np.arange(width) * (1 + pid % 3))[None, :, None]
    for part, colour in enumerate(colours):
        top, bottom = (round(f * height) for f in BOUNDS[part : part + 2])
        image[top:bottom, max(left, 0) : right] = colour + texture[:, max(left, 0) : right]
    image += rng.normal(0, 6, image.shape)
    return image.clip(0, 255).astype(np.uint8)


def infrared(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One-channel (H, W) uint8 thermal-like image: weighted band sum plus noise."""
    return (rgb @ IR_WEIGHTS + rng.normal(0, 8, rgb.shape[:2])).clip(0, 255).astype(np.uint8)


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_sysu(
    root: Path,
    train_ids: tuple[int, ...] = (1, 2, 3, 4),
    test_ids: tuple[int, ...] = (5, 6, 7),
    per_camera: int = 2,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
) -> Path:
    """``cam1..cam6/<pid:04d>/<n:04d>.jpg`` (cams 3, 6 infrared, one channel) + exp/ id files.

    Every identity appears in every camera, except that identity ``test_ids[-1]`` has no
    cam4 and cam5 images (SYSU-MM01 has such gaps); val_id.txt holds the last train id.
    """
    rng = np.random.default_rng(seed)
    for pid in train_ids + test_ids:
        for cam in range(1, 7):
            if pid == test_ids[-1] and cam in (4, 5):
                continue
            for n in range(1, per_camera + 1):
                rgb = person(rng, pid, size)
                array = infrared(rgb, rng) if cam in (3, 6) else rgb
                _save(root / f"cam{cam}" / f"{pid:04d}" / f"{n:04d}.jpg", array)
    (root / "exp").mkdir(parents=True, exist_ok=True)
    (root / "exp" / "train_id.txt").write_text(",".join(map(str, train_ids[:-1])))
    (root / "exp" / "val_id.txt").write_text(str(train_ids[-1]))
    (root / "exp" / "test_id.txt").write_text(",".join(map(str, test_ids)) + "\n")
    return root


def write_regdb(
    root: Path,
    identities: int = 6,
    per_identity: int = 3,
    trials: int = 2,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
) -> Path:
    """``Visible/<pid>/*.bmp``, ``Thermal/<pid>/*.bmp`` (one channel) and the idx/ split files.

    Trial t puts a seeded half of the identities in train, the other half in test.
    """
    rng = np.random.default_rng(seed)
    for pid in range(identities):
        for n in range(per_identity):
            rgb = person(rng, pid, size)
            _save(root / "Visible" / str(pid) / f"female_front_v_{pid:05d}_{n}.bmp", rgb)
            thermal = infrared(rgb, rng)
            _save(root / "Thermal" / str(pid) / f"female_front_t_{pid:05d}_{n}.bmp", thermal)
    (root / "idx").mkdir(parents=True, exist_ok=True)
    for trial in range(1, trials + 1):
        order = np.random.default_rng(trial).permutation(identities)
        parts = {"train": order[: identities // 2], "test": order[identities // 2 :]}
        for part, pids in parts.items():
            for name, letter in (("visible", "v"), ("thermal", "t")):
                lines = [
                    f"{name.capitalize()}/{pid}/female_front_{letter}_{pid:05d}_{n}.bmp {pid}"
                    for pid in sorted(pids)
                    for n in range(per_identity)
                ]
                (root / "idx" / f"{part}_{name}_{trial}.txt").write_text("\n".join(lines))
    return root


def write_generic(
    root: Path, identities: int = 4, per_identity: int = 2, size: tuple[int, int] = (32, 16)
) -> Path:
    """``rgb/<name>/*.jpg`` and ``ir/<name>/*.png`` (one channel), names ``person_<k>``."""
    rng = np.random.default_rng(0)
    for pid in range(identities):
        for n in range(per_identity):
            rgb = person(rng, pid, size)
            _save(root / "rgb" / f"person_{pid}" / f"{n}.jpg", rgb)
            _save(root / "ir" / f"person_{pid}" / f"{n}.png", infrared(rgb, rng))
    return root
