"""`domainssl embed` over archives: the h5 layout of slides, coords that point at the pixels
that were embedded, GeoParquet that matches the embedding raster, the manifest, resume,
concurrent processes, stale locks and failed items, and Zarr stores GDAL opens."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
import zarr
from fixtures import write_infer_models, write_scene, write_slide
from typer.testing import CliRunner

from domainssl.cli import app
from domainssl.data.pathology import SlideGrid, read_patch
from domainssl.embed.claims import Shard, local_device_index, try_claim
from domainssl.export import load_backbone, preprocess
from domainssl.io import staged

BOXES = [(256, 256, 768, 640), (1280, 896, 1792, 1280)]
MPP, SLIDE_MPP, TILE = 0.5, 0.25, 32
STEP = round(TILE * MPP / SLIDE_MPP)  # level-0 px per patch
runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_infer_models(tmp_path_factory.mktemp("models"))["embed"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    write_slide(folder / "a.tif", tissue=BOXES)
    write_slide(folder / "b.tif", tissue=BOXES[:1], seed=1)
    return folder


def embed(model: Path, data: Path, out: Path, *more: str) -> tuple[int, str]:
    args = ["embed", str(model), "--data", str(data), "--out", str(out), "--mpp", str(MPP),
            "--num-workers", "0", "--accelerator", "cpu", *more]  # fmt: skip
    result = runner.invoke(app, args)
    return result.exit_code, result.output


def manifest(out: Path) -> dict[str, dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as file:
        return {Path(r["item"]).name: r for r in csv.DictReader(file)}


def test_slide_h5_has_the_clam_layout_and_attributes(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    code, output = embed(model, slides, tmp_path, "--dtype", "float16", "--tissue-geojson")
    assert code == 0, output
    with h5py.File(tmp_path / "a.h5") as file:
        features, coords = file["features"], file["coords"]
        assert features.dtype == np.float16 and features.shape[1] == 512
        assert coords.dtype == np.int64 and coords.shape == (features.shape[0], 2)
        attributes = {"patch_size": STEP, "patch_level": 1, "mpp": MPP,
                      "patch_size_target": TILE, "slide_mpp": SLIDE_MPP}  # fmt: skip
        assert dict(coords.attrs) == attributes
        assert json.loads(file.attrs["encoder_meta"])["timm_name"] == "resnet10t"
        assert file.attrs["encoder"] == str(model)
        assert json.loads(file.attrs["tissue"])["tissue_threshold"] == 0.5
        expected = {(x, y) for x0, y0, x1, y1 in BOXES for x in range(x0, x1 - STEP + 1, STEP)
                    for y in range(y0, y1 - STEP + 1, STEP)}  # fmt: skip
        assert {tuple(c) for c in coords[:].tolist()} == expected
    tissue = json.loads((tmp_path / "a_tissue.geojson").read_text())
    polygons = [shapely.geometry.shape(f["geometry"]) for f in tissue["features"]]
    assert {f["properties"]["objectType"] for f in tissue["features"]} == {"annotation"}
    boxes = [shapely.box(*box) for box in BOXES]
    assert len(polygons) == 2 and all(
        max(p.intersection(b).area / b.area for p in polygons) > 0.95 for b in boxes
    )
    rows = manifest(tmp_path)
    assert rows["a.tif"]["status"] == "done" and int(rows["a.tif"]["patches"]) == len(expected)


def test_coords_point_at_the_pixels_that_were_embedded(model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    write_slide(folder / "noisy.tif", tissue=[(0, 0, 2048, 1536)], gradient=True)
    code, output = embed(model, folder, tmp_path / "out")
    assert code == 0, output
    with h5py.File(tmp_path / "out" / "noisy.h5") as file:
        features, coords = file["features"][:], file["coords"][:]
    backbone, meta = load_backbone(model)
    grid = SlideGrid(str(folder / "noisy.tif"), SLIDE_MPP, TILE, MPP, 0.5, [])
    picks = np.random.default_rng(0).choice(len(coords), 5, replace=False)
    with openslide.OpenSlide(str(folder / "noisy.tif")) as slide:
        patches = torch.from_numpy(np.stack([read_patch(slide, grid, *coords[i]) for i in picks]))
    with torch.no_grad():
        expected = backbone(preprocess(meta, patches)).numpy()
    np.testing.assert_allclose(features[picks], expected, rtol=1e-4, atol=1e-4)
    distances = np.linalg.norm(features[picks][:, None] - expected[None], axis=2)  # (5, 5)
    assert (distances.argmin(axis=1) == np.arange(5)).all()  # each patch is its own nearest
    assert np.median(distances[~np.eye(5, dtype=bool)]) > 100 * distances.diagonal().max()


def test_bf16_features_stay_within_2_percent_of_float32_and_the_h5_names_the_precision(
    model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "slides"
    write_slide(folder / "noisy.tif", tissue=[(0, 0, 2048, 1536)], gradient=True)
    features = {}
    for precision in ("32-true", "bf16-mixed"):
        code, output = embed(model, folder, tmp_path / precision, "--precision", precision)
        assert code == 0, output
        with h5py.File(tmp_path / precision / "noisy.h5") as file:
            features[precision] = file["features"][:]
            assert file.attrs["precision"] == precision
    exact, half = features["32-true"], features["bf16-mixed"]
    assert exact.shape == half.shape and not np.array_equal(exact, half)  # bf16 did run
    error = np.linalg.norm(half - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert error.max() < 0.02, error.max()
    distances = np.linalg.norm(half[:, None] - exact[None], axis=2)  # (N, N)
    assert np.median(distances) > 4 * distances.diagonal().max()  # patches stay apart


def test_an_unknown_precision_is_exit_2_naming_the_choices(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    code, output = embed(model, slides, tmp_path, "--precision", "bf16")
    assert code == 2 and "bf16-mixed" in output and "Traceback" not in output
    assert not (tmp_path / "manifest.csv").exists()


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--mpp", "-1", "--mpp must be a positive"),
        ("--slide-mpp", "0", "--slide-mpp must be a positive"),
        ("--tissue-threshold", "1.5", "from 0 to 1"),
        ("--batch-size", "0", "--batch-size must be at least 1"),
        ("--num-workers", "-1", "--num-workers must be 0 or more"),
    ],
)
def test_an_impossible_option_is_exit_2_naming_it_before_any_item(
    model: Path, slides: Path, tmp_path: Path, option: str, value: str, named: str
) -> None:
    more = [] if option == "--mpp" else ["--mpp", str(MPP)]
    args = ["embed", str(model), "--data", str(slides), "--out", str(tmp_path / "out"),
            "--accelerator", "cpu", *more, option, value]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and named in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_an_out_path_that_is_a_file_is_exit_2_asking_for_a_folder(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    (tmp_path / "out").write_text("keep me")
    code, output = embed(model, slides, tmp_path / "out")
    assert code == 2 and "is a file: give a folder" in output and "Traceback" not in output
    assert (tmp_path / "out").read_text() == "keep me"


def test_identical_slides_give_identical_features(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "copies"
    folder.mkdir()
    shutil.copy(slides / "a.tif", folder / "first.tif")
    shutil.copy(slides / "a.tif", folder / "second.tif")
    assert embed(model, folder, tmp_path / "out")[0] == 0
    with h5py.File(tmp_path / "out/first.h5") as one, h5py.File(tmp_path / "out/second.h5") as two:
        assert np.array_equal(one["features"][:], two["features"][:])
        assert np.array_equal(one["coords"][:], two["coords"][:])


def test_a_rerun_skips_finished_items_and_redoes_missing_ones(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    assert embed(model, slides, tmp_path)[0] == 0
    finished = (tmp_path / "a.h5").stat()
    (tmp_path / "b.h5").unlink()
    code, output = embed(model, slides, tmp_path)
    assert code == 0, output
    assert (tmp_path / "a.h5").stat().st_mtime_ns == finished.st_mtime_ns
    assert (tmp_path / "a.h5").stat().st_ino == finished.st_ino
    rows = manifest(tmp_path)
    assert rows["a.tif"]["status"] == "done"  # a skip never hides the run that made it
    assert rows["b.tif"]["status"] == "done" and (tmp_path / "b.h5").is_file()
    assert "1 embedded, 0 failed, 1 skipped" in output


def test_failed_items_are_recorded_with_their_message_and_the_run_goes_on(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(slides / "b.tif", data / "good.tif")
    (data / "broken.svs").write_bytes(b"II*\x00 truncated")
    write_scene(data / "five_bands.tif", bands=5, height=600, width=600)
    write_slide(data / "glass.tif", tissue=[])
    code, output = embed(model, data, tmp_path / "out")
    assert code == 0, output
    rows = manifest(tmp_path / "out")
    assert rows["good.tif"]["status"] == "done"
    assert rows["broken.svs"]["status"] == "failed"
    assert "OpenSlide does not recognise its format" in rows["broken.svs"]["error"]
    assert rows["five_bands.tif"]["status"] == "failed"
    assert "five_bands.tif has 5 bands but the model" in rows["five_bands.tif"]["error"]
    assert rows["glass.tif"]["status"] == "failed" and "No tissue" in rows["glass.tif"]["error"]
    assert not (tmp_path / "out" / "glass.h5").exists()


def test_nothing_embedded_is_exit_2_with_the_manifest_written(model: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_slide(data / "glass.tif", tissue=[])
    code, output = embed(model, data, tmp_path / "out")
    assert code == 2 and "Nothing embedded" in output and "Traceback" not in output
    assert manifest(tmp_path / "out")["glass.tif"]["status"] == "failed"


def test_scene_geoparquet_has_valid_geo_metadata_and_the_raster_footprints(
    model: Path, tmp_path: Path
) -> None:
    import duckdb
    import geopandas

    scene = write_scene(tmp_path / "data" / "scene.tif", bands=3, height=600, width=544,
                        nodata_rows=100)  # fmt: skip
    code, output = embed(model, tmp_path / "data", tmp_path / "out")
    assert code == 0, output
    geo = json.loads(pq.read_schema(tmp_path / "out/scene.parquet").metadata[b"geo"])
    column = geo["columns"]["geometry"]
    assert geo["version"] == "1.1.0" and geo["primary_column"] == "geometry"
    assert column["encoding"] == "WKB" and column["geometry_types"] == ["Polygon"]
    assert column["crs"]["id"] == {"authority": "EPSG", "code": 32632}
    frame = geopandas.read_parquet(tmp_path / "out/scene.parquet")
    with rasterio.open(tmp_path / "out/scene.tif") as raster, rasterio.open(scene) as source:
        values, transform = raster.read(), raster.transform
        assert raster.crs == source.crs and raster.count == 512
        assert transform.a == source.transform.a * TILE and transform.c == source.transform.c
        assert raster.overviews(1) or raster.width < 512  # COG layout (overviews when large)
    valid = np.isfinite(values).all(axis=0)
    assert len(frame) == valid.sum() and not valid[: 100 // TILE].any()
    for _, entry in frame.sample(5, random_state=0).iterrows():
        r, c = int(entry["row"]), int(entry["col"])
        footprint = shapely.box(*(transform * (c, r + 1)), *(transform * (c + 1, r)))
        assert entry.geometry.equals(footprint)
        np.testing.assert_allclose(entry["embedding"], values[:, r, c])
    assert column["bbox"] == pytest.approx(list(frame.total_bounds))
    counted = duckdb.sql(f"select count(*) from '{tmp_path / 'out/scene.parquet'}'")
    assert counted is not None and counted.fetchall() == [(len(frame),)]


def test_scene_zarr_opens_in_gdal_with_the_raster_crs_transform_and_values(
    model: Path, tmp_path: Path
) -> None:
    write_scene(tmp_path / "data" / "scene.tif", bands=3, height=600, width=544, nodata_rows=100)
    code, output = embed(model, tmp_path / "data", tmp_path / "out", "--format", "tif,zarr")
    assert code == 0, output
    store = tmp_path / "out/scene.zarr"
    assert not (tmp_path / "out/scene.parquet").exists() and (store / ".zmetadata").is_file()
    gdal_name = f'ZARR:"{store}":/embedding'
    with rasterio.open(tmp_path / "out/scene.tif") as raster, rasterio.open(gdal_name) as opened:
        values, transform, crs = raster.read(), raster.transform, raster.crs
        assert opened.crs == crs and opened.transform == transform
        np.testing.assert_array_equal(opened.read(), values)  # NaN where nothing was embedded
    assert np.isnan(values[:, : 100 // TILE]).all()
    embedding = zarr.open_array(store / "embedding", mode="r")
    assert embedding.attrs["_ARRAY_DIMENSIONS"] == ["band", "y", "x"]
    assert embedding.attrs["grid_mapping"] == embedding.attrs["coordinates"] == "spatial_ref"
    grid_mapping = zarr.open_array(store / "spatial_ref", mode="r")
    assert grid_mapping.metadata.fill_value is None  # else xarray masks it into a float NaN
    assert rasterio.crs.CRS.from_wkt(str(grid_mapping.attrs["crs_wkt"])) == crs
    height, width = values.shape[1:]
    x, y = (np.asarray(zarr.open_array(store / axis, mode="r")[:]) for axis in "xy")
    np.testing.assert_allclose(x, [(transform * (c + 0.5, 0))[0] for c in range(width)])
    np.testing.assert_allclose(y, [(transform * (0, r + 0.5))[1] for r in range(height)])


def test_a_rerun_counts_a_finished_zarr_store_and_leaves_it_untouched(
    model: Path, tmp_path: Path
) -> None:
    write_scene(tmp_path / "data" / "scene.tif", bands=3, height=600, width=544)
    assert embed(model, tmp_path / "data", tmp_path / "out", "--format", "zarr")[0] == 0
    store = tmp_path / "out/scene.zarr"
    written = (store / "embedding" / ".zarray").stat().st_mtime_ns
    cells = int(np.isfinite(zarr.open_array(store / "embedding", mode="r")[0]).sum())
    code, output = embed(model, tmp_path / "data", tmp_path / "out", "--format", "zarr")
    assert code == 0 and "0 embedded, 0 failed, 1 skipped" in output, output
    assert (store / "embedding" / ".zarray").stat().st_mtime_ns == written
    assert int(manifest(tmp_path / "out")["scene.tif"]["patches"]) == cells > 0
    parts = (tmp_path / "out/.embed/parts").glob("*.csv")
    skipped = [r for p in parts for r in csv.DictReader(p.open()) if r["status"] == "skipped"]
    assert [int(r["patches"]) for r in skipped] == [cells]  # counted from the store


def test_a_failed_block_removes_a_temporary_folder_and_keeps_the_final_name_free(
    tmp_path: Path,
) -> None:
    final = tmp_path / "scene.zarr"
    with pytest.raises(RuntimeError), staged([final]) as temps:
        temps[0].unlink()
        (temps[0] / "embedding").mkdir(parents=True)  # a half-written store
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_shards_and_devices_come_from_the_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(7))
    shards = [Shard(i, 3).take(items) for i in range(3)]
    assert sorted(i for shard in shards for i in shard) == items and shards[0] == [0, 3, 6]
    monkeypatch.setenv("SLURM_PROCID", "2")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert Shard.from_environment() == Shard(2, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert Shard.from_environment() == Shard(1, 2)  # torchrun's variables come first
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert local_device_index(1) == 0  # srun --gpus-per-task 1: one visible GPU per task
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert local_device_index(4) == 2


def test_two_concurrent_processes_embed_every_item_exactly_once(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        shutil.copy(slides / "b.tif", data / f"s{i}.tif")
    command = [sys.executable, "-m", "domainssl", "embed", str(model), "--data", str(data),
               "--out", str(tmp_path / "out"), "--mpp", str(MPP), "--num-workers", "0",
               "--accelerator", "cpu", "--shard", "0/1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    processes = [subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]  # fmt: skip
    for process in processes:
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, errors[-2000:]
    done = []
    for part in (tmp_path / "out/.embed/parts").glob("*.csv"):
        with part.open(newline="") as file:
            done += [Path(r["item"]).name for r in csv.DictReader(file) if r["status"] == "done"]
    assert sorted(done) == [f"s{i}.tif" for i in range(4)]  # each once, by one of the two
    assert {r["status"] for r in manifest(tmp_path / "out").values()} == {"done"}


def test_devices_start_one_process_each_and_merge_one_manifest(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    code, output = embed(model, slides, tmp_path, "--devices", "2")
    assert code == 0, output
    rows = manifest(tmp_path)
    assert {r["shard"] for r in rows.values()} == {"0/2", "1/2"}
    assert all(r["status"] == "done" for r in rows.values())


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_stale_lock_is_taken_over_and_a_live_one_is_respected(tmp_path: Path) -> None:
    lock = tmp_path / "item.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "time": 0}))
    assert try_claim(lock)  # its owner died on this host
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    other = tmp_path / "other.lock"
    other.write_text(json.dumps({"host": "elsewhere", "pid": 1, "time": 0}))
    assert not try_claim(other)  # another host, recently touched
    old = time.time() - 3600
    os.utime(other, (old, old))
    assert try_claim(other)  # untouched for an hour: its owner is gone
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / "live.lock"
        live.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "time": 0}))
        assert not try_claim(live)
    finally:
        sleeper.kill()


def test_an_item_locked_by_a_dead_process_is_embedded(
    model: Path, slides: Path, tmp_path: Path
) -> None:
    locks = tmp_path / ".embed" / "locks"
    locks.mkdir(parents=True)
    owner = {"host": socket.gethostname(), "pid": dead_pid(), "time": 0}
    (locks / "a.lock").write_text(json.dumps(owner))
    assert embed(model, slides, tmp_path)[0] == 0
    assert manifest(tmp_path)["a.tif"]["status"] == "done" and not (locks / "a.lock").exists()


def test_merge_alone_rebuilds_the_manifest(model: Path, slides: Path, tmp_path: Path) -> None:
    assert embed(model, slides, tmp_path)[0] == 0
    (tmp_path / "manifest.csv").unlink()
    result = runner.invoke(app, ["embed", "--merge", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert set(manifest(tmp_path)) == {"a.tif", "b.tif"}
