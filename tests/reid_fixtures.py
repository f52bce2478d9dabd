"""Seeded generators of tiny RGB-infrared re-ID sets in the SYSU-MM01, RegDB, LLCM and
generic on-disk layouts, and of SYSU-MM01's ``rand_perm_cam.mat`` in its official structure.
A person is a figure of four coloured body parts (head, torso, legs, feet) whose colours and
texture depend on the identity; its infrared image is a weighted band sum plus noise, stored
with one channel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat

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


def write_rand_perm_cam(
    sysu: Path,
    trials: int = 10,
    seed: int = 0,
    fixed: dict[tuple[int, int], list[list[int]]] | None = None,
    path: Path | None = None,
) -> Path:
    """``exp/rand_perm_cam.mat`` of a generated SYSU-MM01 folder, in the structure of the data
    set's evaluation file: a 6 x 1 cell array (cameras) of n x 1 cell arrays (identity p at
    row p, n = the camera's largest identity number) of uint8 (trials x images) matrices,
    each row a 1-based permutation of the identity's images in that camera, trials x 0 where
    it has none. ``fixed[(cam, pid)]`` gives rows by hand (one per trial)."""
    rng = np.random.default_rng(seed)
    cams = np.empty((6, 1), dtype=object)
    for cam in range(1, 7):
        folders = {int(f.name): f for f in (sysu / f"cam{cam}").iterdir() if f.is_dir()}
        cell = np.empty((max(folders, default=1), 1), dtype=object)
        for pid in range(1, len(cell) + 1):
            images = len(list(folders[pid].iterdir())) if pid in folders else 0
            rows = [rng.permutation(images) + 1 for _ in range(trials)]
            if fixed and (cam, pid) in fixed:
                rows = [np.asarray(row) for row in fixed[(cam, pid)]]
            cell[pid - 1, 0] = np.array(rows, dtype=np.uint8).reshape(trials, images)
        cams[cam - 1, 0] = cell
    path = path or sysu / "exp" / "rand_perm_cam.mat"
    savemat(str(path), {"rand_perm_cam": cams})
    return path


LLCM_VIS_CAMS, LLCM_NIR_CAMS = (1, 2, 3), (1, 2, 4)
"""Cameras of the generated LLCM set (the real one: visible 1-9, near-infrared 1, 2, 4-9)."""


def write_llcm(
    root: Path,
    train_ids: tuple[int, ...] = (1, 2, 3),
    test_ids: tuple[int, ...] = (4, 5, 6),
    per_camera: int = 2,
    size: tuple[int, int] = (32, 16),
    seed: int = 0,
) -> Path:
    """LLCM's released layout: training images ``vis/<pid:04d>/`` and ``nir/<pid:04d>/``
    listed by ``idx/train_vis.txt`` / ``idx/train_nir.txt`` (``path label``, labels 0..n-1);
    test images ``test_vis/cam<k>/<pid:04d>/`` and ``test_nir/cam<k>/<pid:04d>/`` (one channel)
    with ``idx/test_id.txt`` and the ``idx/test_{vis,nir}.txt`` lists. Files are named
    ``<pid:04d>_c<cam:02d>_s<time>_f<frame>_{vis,nir}.jpg`` as LLCM's are.

    Training identities appear in visible cams 1, 2 and near-infrared cams 2, 4. Test
    identities appear in every camera of :data:`LLCM_VIS_CAMS` / :data:`LLCM_NIR_CAMS`,
    except that ``test_ids[-1]`` has no visible cam3 images; ``test_nir/cam3/`` holds
    images of ``test_ids[0]`` that DEEN's test code does not read (it has no NIR cam3).
    """
    rng = np.random.default_rng(seed)

    def write(folder: str, pid: int, cam: int, modality: str) -> list[str]:
        names = []
        for n in range(per_camera):
            rgb = person(rng, pid, size)
            name = (
                f"{folder}/{pid:04d}/{pid:04d}_c{cam:02d}_s{100000 + n}_f{7000 + n}_{modality}.jpg"
            )
            _save(root / name, infrared(rgb, rng) if modality == "nir" else rgb)
            names.append(name)
        return names

    (root / "idx").mkdir(parents=True, exist_ok=True)
    train_cams: dict[str, tuple[int, ...]] = {"vis": (1, 2), "nir": (2, 4)}
    for modality, cams in train_cams.items():
        lines = [
            f"{name} {label}"
            for label, pid in enumerate(train_ids)
            for cam in cams
            for name in write(modality, pid, cam, modality)
        ]
        (root / "idx" / f"train_{modality}.txt").write_text("\n".join(lines) + "\n")
    for modality, cams in {"vis": LLCM_VIS_CAMS, "nir": LLCM_NIR_CAMS}.items():
        lines = [
            f"{name} {pid}"
            for pid in test_ids
            for cam in cams
            if not (modality == "vis" and cam == 3 and pid == test_ids[-1])
            for name in write(f"test_{modality}/cam{cam}", pid, cam, modality)
        ]
        (root / "idx" / f"test_{modality}.txt").write_text("\n".join(lines) + "\n")
    write("test_nir/cam3", test_ids[0], 3, "nir")
    (root / "idx" / "test_id.txt").write_text(",".join(map(str, test_ids)))
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
