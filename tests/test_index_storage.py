"""How an index stores its frames: float16 (the default) or int8 codes with one float16 scale
per region vector (hapvr/retrieval/index_store.py). Fresh random features each run (seed printed
by ``fresh_seed``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.io.serialization import CorruptFileError
from hapvr.retrieval.index_store import FORMAT, FORMAT_INT8, IndexStore, feature_space, read_manifest, view_key
from hapvr.retrieval.planted import PlantedCollection, PlantedConfig
from hapvr.retrieval.search import Searcher

R, D = 9, 64


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def space() -> dict:
    return feature_space(ChamferBaseline(), backbone="synthetic")


def int8_reference(x: np.ndarray) -> np.ndarray:
    """The int8 round trip written out: per region vector, the scale max|x| / 127 rounded to
    float16, codes round(x / scale) in -127..127, decoded as codes x scale."""
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for r in range(x.shape[1]):
            scale = float(np.float16(np.abs(x[t, r]).max() / 127))
            if scale > 0:
                out[t, r] = np.clip(np.round(x[t, r] / scale), -127, 127) * scale
    return out


def test_int8_frames_round_trip_as_written_out(tmp_path, fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    videos = {f"v{i}": unit(rng, int(rng.integers(1, 9)), R, D) * float(rng.uniform(0.1, 3)) for i in range(6)}
    videos["zeros"] = np.zeros((2, R, D), np.float32)
    view = unit(rng, 3, R, D)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D), storage="int8", insets=True) as store:
        assert store.storage == "int8" and store._frame_bytes == R * (D + 2)
        for vid, x in videos.items():
            store.add(vid, x, [({"top": 0, "left": 0, "height": 8, "width": 8}, view)] if vid == "v0" else [])
        with pytest.raises(ValueError, match="NaN"):
            store.add("nan", np.full((2, R, D), np.nan, np.float32))
        store.remove("v3")
        store.compact()
    assert read_manifest(path)["format"] == FORMAT_INT8 and read_manifest(path)["storage_dtype"] == "int8"
    frames = sum(len(x) for v, x in videos.items() if v != "v3") + len(view)
    assert (path / "g1.frames").stat().st_size == frames * R * (D + 2)  # half of float16's 2 D bytes, plus a scale
    with IndexStore.open(path, space()) as store:
        for vid, x in videos.items():
            if vid != "v3":
                got = store.load(vid).numpy()
                np.testing.assert_allclose(got, int8_reference(x), rtol=0, atol=1e-6)
                # at most half a step from the features: max|x| / 254 per component
                assert np.all(np.abs(got - x) <= np.abs(x).max(-1, keepdims=True) / 254 * 1.001 + 1e-7)
        np.testing.assert_allclose(store.load(view_key("v0", 1)).numpy(), int8_reference(view), atol=1e-6)
        store.descriptor_matrix()  # descriptors pass their CRCs


def test_int8_search_agrees_with_float16(tmp_path):
    """On the planted collection, an int8 index returns the float16 index's top-10 for every
    planted query, with scores within 2e-3."""
    planted = PlantedCollection(PlantedConfig(n_videos=60, dim=D, planted_fraction=0.35, seed=5))
    stores = {}
    for storage in ("float16", "int8"):
        with IndexStore.create(tmp_path / storage, space(), (R, D), durable=False, storage=storage) as store:
            store.add_many(iter(planted))
        stores[storage] = IndexStore.open(tmp_path / storage)
    try:
        searchers = {k: Searcher(s, ChamferBaseline()) for k, s in stores.items()}
        for n in range(len(planted.sources)):
            query, _ = planted.query(n)
            a, b = (searchers[k].search(query, k=10, exhaustive=True) for k in ("float16", "int8"))
            assert [h.id for h in a.hits][:3] == [h.id for h in b.hits][:3]
            assert len({h.id for h in a.hits} & {h.id for h in b.hits}) >= 9
            assert max(abs(x.score - y.score) for x, y in zip(a.hits, b.hits) if x.id == y.id) < 2e-3
        assert stores["int8"].disk_bytes() < 0.6 * stores["float16"].disk_bytes()
    finally:
        for s in stores.values():
            s.close()


def test_storages_are_checked(tmp_path):
    with pytest.raises(ValueError, match="storage must be one of float16, int8"):
        IndexStore.create(tmp_path / "x", space(), (R, D), storage="int4")
    IndexStore.create(tmp_path / "f", space(), (R, D)).close()
    manifest = read_manifest(tmp_path / "f")
    assert manifest["format"] == FORMAT and manifest["storage_dtype"] == "float16"
    manifest["storage_dtype"] = "int4"  # a later version's storage
    (tmp_path / "f" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptFileError, match="stored as 'int4', which this version of hapvr cannot read"):
        IndexStore.open(tmp_path / "f")


def test_index_build_storage_option(tmp_path, capsys):
    from hapvr.data.media import clip_paths
    from hapvr.index import main as index_main

    clip = clip_paths()["v2s"]
    index = tmp_path / "i"
    assert index_main(["build", "--videos", clip, "--index", str(index), "--storage", "int8", "--no-progress"]) == 0
    assert index_main(["info", "--index", str(index)]) == 0
    assert "frames stored as int8" in capsys.readouterr().out
    assert index_main(["build", "--videos", clip, "--index", str(index), "--storage", "float16"]) == 2
    assert f"error: --storage: --index {index} stores its frames as int8; build a new index for float16" in \
        capsys.readouterr().err
    with IndexStore.open(index) as store:
        assert store.storage == "int8" and len(store) == 1 and torch.isfinite(store.load(store.ids()[0])).all()
