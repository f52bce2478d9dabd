"""An embedding raster as GeoParquet 1.1: one row per cell with a value (row, col, the
``embedding`` list and the cell's footprint polygon as WKB ``geometry`` in the raster's CRS),
and the file's ``geo`` metadata (encoding, geometry types, PROJJSON CRS, bbox) that geopandas,
DuckDB and GDAL read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
from affine import Affine
from pyproj import CRS
from rasterio.windows import Window

GEOPARQUET_VERSION = "1.1.0"
ROWS_PER_READ = 256

WKB_POLYGON = np.dtype(
    [("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (10,))]
)
"""A little-endian WKB polygon of one ring of 5 points (the first repeated), packed."""


def cell_rings(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 5, 2) x, y of the closed footprint ring of raster cells (``rows``, ``cols``) under
    ``transform``, counter-clockwise on a north-up raster."""
    corners = np.array([(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)], dtype=np.float64)  # (dc, dr)
    c = cols[:, None] + corners[None, :, 0]  # (N, 5)
    r = rows[:, None] + corners[None, :, 1]
    x = transform.a * c + transform.b * r + transform.c
    y = transform.d * c + transform.e * r + transform.f
    return np.stack([x, y], axis=2)


def cell_polygons(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> pa.BinaryArray:
    """WKB footprints of raster cells (``rows``, ``cols``) under ``transform``."""
    records = np.zeros(len(rows), WKB_POLYGON)
    records["order"], records["type"], records["rings"], records["points"] = 1, 3, 1, 5
    records["xy"] = cell_rings(transform, rows, cols).reshape(len(rows), 10)
    offsets = np.arange(len(rows) + 1, dtype=np.int32) * WKB_POLYGON.itemsize
    return pa.BinaryArray.from_buffers(
        pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(records.tobytes())]
    )


def _valid_extent(src: rasterio.DatasetReader) -> tuple[int, list[float] | None]:
    """Cells with a value and the bbox of their footprints (a pass over band 1 alone: a
    nodata cell is NaN in every band)."""
    count, lows, highs = 0, [], []
    for top in range(0, src.height, ROWS_PER_READ):
        window = Window(0, top, src.width, min(ROWS_PER_READ, src.height - top))
        rows, cols = np.nonzero(np.isfinite(src.read(1, window=window)))
        if len(rows):
            count += len(rows)
            rings = cell_rings(src.transform, rows + top, cols)
            lows.append(rings.min(axis=(0, 1)))
            highs.append(rings.max(axis=(0, 1)))
    if not count:
        return 0, None
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    return count, [float(low[0]), float(low[1]), float(high[0]), float(high[1])]


def geo_metadata(crs: rasterio.crs.CRS | None, bbox: list[float] | None) -> dict[str, Any]:
    """The ``geo`` file metadata of GeoParquet 1.1 for one WKB polygon column."""
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Polygon"]}
    column["crs"] = CRS.from_wkt(crs.to_wkt()).to_json_dict() if crs else None
    if bbox is not None:
        column["bbox"] = bbox
    return {"version": GEOPARQUET_VERSION, "primary_column": "geometry",
            "columns": {"geometry": column}}  # fmt: skip


def write_geoparquet(raster: Path, out: Path) -> int:
    """Write the cells of the (D, H, W) float embedding ``raster`` that hold a value to
    ``out``, block of rows by block of rows; the row count."""
    with rasterio.open(raster) as src:
        count, bbox = _valid_extent(src)
        dimension = src.count
        schema = pa.schema(
            [("row", pa.int32()), ("col", pa.int32()),
             ("embedding", pa.list_(pa.float32(), dimension)), ("geometry", pa.binary())],
            metadata={b"geo": json.dumps(geo_metadata(src.crs, bbox)).encode()},
        )  # fmt: skip
        with pq.ParquetWriter(out, schema) as writer:
            for top in range(0, src.height, ROWS_PER_READ):
                window = Window(0, top, src.width, min(ROWS_PER_READ, src.height - top))
                block = src.read(window=window).astype(np.float32)  # (D, n, W)
                valid = np.isfinite(block).all(axis=0)
                rows, cols = np.nonzero(valid)
                vectors = block[:, valid].T  # (N, D)
                table = pa.table(
                    [pa.array(rows + top, pa.int32()), pa.array(cols, pa.int32()),
                     pa.FixedSizeListArray.from_arrays(vectors.reshape(-1), dimension),
                     cell_polygons(src.transform, rows + top, cols)],
                    schema=schema,
                )  # fmt: skip
                writer.write_table(table)
    return count
