"""Generated hostile and broken inputs: each writer returns the path it created."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
from fixtures import write_chip_folder, write_geotiff, write_scene, write_slide
from PIL import Image


def truncated_geotiff(path: Path) -> Path:
    """A valid GeoTIFF cut to half its bytes."""
    write_scene(path, bands=3, height=64, width=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def complex_geotiff(path: Path) -> Path:
    """A GeoTIFF of complex64 pixels (no image model takes complex numbers)."""
    array = (np.ones((2, 32, 32)) + 1j * np.ones((2, 32, 32))).astype(np.complex64)
    return write_geotiff(path, array)


def nodata_scene(path: Path) -> Path:
    """A scene whose every pixel is nodata."""
    return write_geotiff(path, np.zeros((3, 64, 64), np.uint16), nodata=0)


def nonfinite_scene(path: Path) -> Path:
    """A float scene whose first band is NaN and second band +inf everywhere."""
    array = np.random.default_rng(0).normal(size=(3, 64, 64)).astype(np.float32)
    array[0], array[1] = np.nan, np.inf
    return write_geotiff(path, array)


def constant_band_chips(root: Path) -> Path:
    """A chip folder whose band 1 is the same value in every chip (zero variance)."""
    rng = np.random.default_rng(0)
    for i in range(6):
        array = rng.integers(0, 1000, (3, 32, 32)).astype(np.uint16)
        array[1] = 7
        write_geotiff(root / f"chip_{i}.tif", array)
    return root


def one_pixel_image(path: Path) -> Path:
    """A 1x1 single-band GeoTIFF."""
    return write_geotiff(path, np.ones((1, 1, 1), np.uint16))


def huge_declared_tiff(path: Path) -> Path:
    """A 200-byte TIFF whose header declares a 10^6 x 10^6 uint8 image."""
    side, entries = 1_000_000, 8
    ifd = 8
    data_offset = ifd + 2 + entries * 12 + 4
    tags = [
        (256, 4, 1, side),  # ImageWidth
        (257, 4, 1, side),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: min-is-black
        (273, 4, 1, data_offset),  # StripOffsets
        (278, 4, 1, side),  # RowsPerStrip
        (279, 4, 1, side * side % 2**32),  # StripByteCounts
    ]
    body = struct.pack("<2sHI", b"II", 42, ifd) + struct.pack("<H", entries)
    body += b"".join(struct.pack("<HHII", *tag) for tag in tags) + struct.pack("<I", 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body + bytes(64))
    return path


def fake_slide(path: Path) -> Path:
    """A ``.svs`` file of random bytes that OpenSlide cannot open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def slide_without_mpp(path: Path) -> Path:
    """A small pyramidal slide that records no resolution."""
    return write_slide(path, width=512, height=512, mpp=None, tissue=[(0, 0, 512, 512)])


def exif_rotated_jpeg(path: Path) -> Path:
    """A 40x20 JPEG (wide) tagged EXIF orientation 6 (display rotated: 20 wide, 40 high)."""
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, exif=exif)
    return path


def symlink_loop_folder(root: Path) -> Path:
    """A chip folder holding a symlink to itself (and one to its parent)."""
    write_chip_folder(root, per_class=3)
    os.symlink(root, root / "class_0" / "loop")
    os.symlink(root / "class_0", root / "class_0" / "self")
    return root


def non_utf8_folder(root: Path) -> Path:
    """A chip folder where one chip's file name is Latin-1 bytes (invalid UTF-8)."""
    write_chip_folder(root, per_class=3)
    source = root / "class_0" / "chip_0.tif"
    target = os.path.join(os.fsencode(root / "class_0"), b"caf\xe9.tif")
    os.rename(os.fsencode(source), target)
    return root


def mixed_folder(root: Path, bad: int = 2) -> Path:
    """Good chips plus ``bad`` truncated ones (``bad_<i>.tif``)."""
    write_chip_folder(root, per_class=4)
    for i in range(bad):
        truncated_geotiff(root / "class_0" / f"bad_{i}.tif")
    return root


WRONG_TYPES_YAML = "data:\n  batch_size: many\n  colour: red\ntrainer:\n  epochs: [1, 2]\n"
PYTHON_TAG_YAML = "data:\n  path: !!python/object/apply:os.system ['touch {marker}']\n"
