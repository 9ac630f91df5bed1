"""How an index stores its frames: float16 (the default), int8 codes with one float16 scale per
region vector, or product-quantiser codes (hapvr/retrieval/index_store.py, codecs.py). Fresh
random features each run (seed printed by ``fresh_seed``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hapvr.evaluation.scorers import ChamferBaseline
from hapvr.io.serialization import CorruptFileError
from hapvr.retrieval.codecs import ProductQuantizer
from hapvr.retrieval.coarse import CoarseConfig, segment_chamfer, video_descriptors
from hapvr.retrieval.codecs import DecodedRows, coded_rows, parse_storage
from hapvr.retrieval.index_store import (FORMAT, FORMAT_CODED_ROWS, FORMAT_INT8, IndexStore, feature_space, read_manifest,
                                        view_key)
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


def fill(store: IndexStore, videos: dict, view: np.ndarray, removed: str) -> None:
    """Adds ``videos`` (``v0`` with ``view`` as an inset view), refuses NaN features, removes
    ``removed`` and compacts: every path a stored frame takes."""
    for vid, x in videos.items():
        store.add(vid, x, [({"top": 0, "left": 0, "height": 8, "width": 8}, view)] if vid == "v0" else [])
    with pytest.raises(ValueError, match="NaN"):
        store.add("nan", np.full((2, R, D), np.nan, np.float32))
    store.remove(removed)
    store.compact()


def test_int8_frames_round_trip_as_written_out(tmp_path, fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    videos = {f"v{i}": unit(rng, int(rng.integers(1, 9)), R, D) * float(rng.uniform(0.1, 3)) for i in range(6)}
    videos["zeros"] = np.zeros((2, R, D), np.float32)
    view = unit(rng, 3, R, D)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D), storage="int8", insets=True) as store:
        assert store.storage == "int8" and store._frame_bytes == R * (D + 2)
        fill(store, videos, view, "v3")
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
    with pytest.raises(ValueError, match="storage must be one of float16, int8, pq"):
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


# --- product quantisation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def codebooks():
    """A plain PQ and an OPQ to fewer dimensions, trained once on random unit vectors."""
    rng = np.random.default_rng(1)
    sample = unit(rng, 4000, D)
    return {"pq": ProductQuantizer.train(sample, 16, rotate=False),
            "opq": ProductQuantizer.train(sample, 8, rotate=True, dims=32, iterations=8)}


def nearest_codes(pq: ProductQuantizer, x: np.ndarray) -> np.ndarray:
    """The codes written out: per sub-vector of the rotated vector, the centroid at the least
    squared distance."""
    y = (x @ pq.rotation if pq.rotation is not None else x).reshape(len(x), pq.m, -1)
    dist = ((y[:, :, None, :] - pq.centroids[None]) ** 2).sum(-1)  # [N, M, 256]
    return dist.argmin(-1).astype(np.uint8)


def faiss_reference(pq: ProductQuantizer, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """faiss's codes and reconstruction of ``x [N, D]`` with the same centroids and rotation."""
    import faiss

    y = x @ pq.rotation if pq.rotation is not None else x
    ref = faiss.ProductQuantizer(pq.rotated_dim, pq.m, 8)
    faiss.copy_array_to_vector(pq.centroids.ravel(), ref.centroids)
    codes = ref.compute_codes(np.ascontiguousarray(y, dtype=np.float32))
    back = ref.decode(codes)
    return codes, back @ pq.rotation.T if pq.rotation is not None else back


@pytest.mark.parametrize("kind", ["pq", "opq"])
def test_product_quantiser_codes_as_faiss(codebooks, kind, tmp_path, fresh_seed):
    pq = codebooks[kind]
    rng = np.random.default_rng(fresh_seed)
    x = unit(rng, 3, 7, D) * 1.5
    codes = pq.encode(torch.from_numpy(x))
    assert codes.dtype == torch.uint8 and codes.shape == (3, 7, pq.m)
    ref_codes, ref_back = faiss_reference(pq, x.reshape(-1, D))
    assert (codes.reshape(-1, pq.m).numpy() == nearest_codes(pq, x.reshape(-1, D))).mean() > 0.999  # ties
    assert (codes.reshape(-1, pq.m).numpy() == ref_codes).mean() > 0.999
    np.testing.assert_allclose(pq.decode(torch.from_numpy(ref_codes)).numpy(), ref_back, atol=1e-5)
    if kind == "opq":  # orthonormal columns: decoding is the exact transpose of the rotation
        np.testing.assert_allclose(pq.rotation.T @ pq.rotation, np.eye(pq.rotated_dim), atol=1e-4)
        assert pq.name == "opq8x32" and pq.dim == D
    crc = pq.save(tmp_path / "c.npz")
    back = ProductQuantizer.load(tmp_path / "c.npz", crc)
    assert torch.equal(back.encode(torch.from_numpy(x)), codes)
    with pytest.raises(ValueError, match="damaged"):
        ProductQuantizer.load(tmp_path / "c.npz", crc ^ 1)
    np.savez(tmp_path / "bad.npz", centroids=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle|Object arrays"):  # data only, never a pickle
        ProductQuantizer.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a codebook"):
        ProductQuantizer.load(tmp_path / "other.npz")
    with pytest.raises(ValueError, match=r"centroids must be \[M, 256, d\]"):
        ProductQuantizer(np.zeros((4, 16, 8), np.float32))


def test_pq_frames_round_trip_through_the_index(codebooks, tmp_path, fresh_seed):
    pq = codebooks["opq"]
    rng = np.random.default_rng(fresh_seed)
    videos = {f"v{i}": unit(rng, int(rng.integers(1, 9)), R, D) for i in range(5)}
    view = unit(rng, 3, R, D)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D), storage="pq", codebook=pq, insets=True) as store:
        assert store._frame_bytes == R * pq.m
        fill(store, videos, view, "v2")
    manifest = read_manifest(path)
    assert manifest["format"] == FORMAT_INT8 and manifest["storage_dtype"] == "pq" and manifest["codebook"] == pq.name
    frames = sum(len(x) for v, x in videos.items() if v != "v2") + len(view)
    assert (path / "g1.frames").stat().st_size == frames * R * pq.m
    with IndexStore.open(path, space()) as store:
        for vid, x in videos.items():
            if vid != "v2":
                _, ref = faiss_reference(pq, x.reshape(-1, D))
                np.testing.assert_allclose(store.load(vid).numpy().reshape(-1, D), ref, atol=1e-5)
        np.testing.assert_allclose(store.load(view_key("v0", 1)).numpy().reshape(-1, D),
                                   faiss_reference(pq, view.reshape(-1, D))[1], atol=1e-5)
        store.descriptor_matrix()
    with pytest.raises(ValueError, match="needs a codebook"):
        IndexStore.create(tmp_path / "x", space(), (R, D), storage="pq")
    with pytest.raises(ValueError, match="codebook codes 64-dimensional vectors, the index holds D = 32"):
        IndexStore.create(tmp_path / "y", space(), (R, 32), storage="pq", codebook=pq)
    (path / "codebook.npz").write_bytes((path / "codebook.npz").read_bytes()[:-9])
    with pytest.raises(CorruptFileError, match="its codebook codebook.npz cannot be read"):
        IndexStore.open(path)


def test_pq_search_keeps_the_planted_copies(codebooks, tmp_path):
    """On the planted collection, a PQ index (16 bytes a 64-d region vector, an eighth of float16)
    ranks every planted query's source first, as the float16 index does."""
    planted = PlantedCollection(PlantedConfig(n_videos=60, dim=D, planted_fraction=0.35, seed=5))
    sample = np.concatenate([x.reshape(-1, D) for _, x in planted])
    sample = sample[np.random.default_rng(0).choice(len(sample), 5000, replace=False)]
    pq = ProductQuantizer.train(sample, 16, rotate=True, iterations=8)
    stores = {}
    for storage in ("float16", "pq"):
        with IndexStore.create(tmp_path / storage, space(), (R, D), durable=False, storage=storage,
                               codebook=pq if storage == "pq" else None) as store:
            store.add_many(iter(planted))
        stores[storage] = IndexStore.open(tmp_path / storage)
    try:
        searchers = {k: Searcher(s, ChamferBaseline()) for k, s in stores.items()}
        kept = []
        for n in range(len(planted.sources)):
            query, source = planted.query(n)
            a, b = (searchers[k].search(query, k=10, exhaustive=True) for k in ("float16", "pq"))
            assert a.hits[0].id == b.hits[0].id
            kept.append(len({h.id for h in a.hits} & {h.id for h in b.hits}) / 10)
        assert np.mean(kept) >= 0.8, kept
        assert stores["pq"].disk_bytes() < 0.5 * stores["float16"].disk_bytes()
    finally:
        for s in stores.values():
            s.close()


def test_coded_descriptor_rows_round_trip_and_search(codebooks, tmp_path, fresh_seed):
    """Descriptor rows stored as PQ codes (``desc_codebook``): M bytes a row on disk, read back as
    faiss's reconstruction of the exact rows, through every path (views, compaction, the coarse
    search flat and IVF, a damaged row or codebook refused)."""
    rng = np.random.default_rng(fresh_seed)
    rows = np.concatenate([video_descriptors(unit(rng, 6, R, D)) for _ in range(300)])
    book = ProductQuantizer.train(rows, 8, rotate=False)
    videos = {f"v{i}": unit(rng, int(rng.integers(1, 9)), R, D) for i in range(40)}
    view = unit(rng, 3, R, D)
    path = tmp_path / "i"
    with IndexStore.create(path, space(), (R, D), insets=True, desc_codebook=book) as store:
        fill(store, videos, view, "v2")
    manifest = read_manifest(path)
    assert manifest["format"] == FORMAT_CODED_ROWS and manifest["desc_codebook"] == "pq8"
    kept = {k: x for k, x in videos.items() if k != "v2"}
    exact = {k: video_descriptors(x.astype(np.float16).astype(np.float32)) for k, x in kept.items()}
    exact[view_key("v0", 1)] = video_descriptors(view.astype(np.float16).astype(np.float32))
    assert (path / "g1.desc").stat().st_size == sum(len(r) for r in exact.values()) * book.m
    with IndexStore.open(path, space()) as store:
        matrix = store.descriptor_matrix()
        assert isinstance(matrix, DecodedRows) and matrix.shape == (sum(len(r) for r in exact.values()), D)
        ids, starts, counts = store.row_layout(views=True)
        for key, s, c in zip(ids, starts, counts):
            _, ref = faiss_reference(book, exact[key])
            np.testing.assert_allclose(matrix[s: s + c], ref, atol=1e-5)
            np.testing.assert_array_equal(matrix[np.arange(s, s + c)], matrix[s: s + c])
        got = store.descriptors()
        for k, vid in enumerate(got.ids):
            np.testing.assert_allclose(got.vectors[got.owners == k], faiss_reference(book, exact[vid])[1], atol=1e-5)
        q = video_descriptors(unit(rng, 7, R, D))
        order = np.argsort(starts)
        want = segment_chamfer(q, np.asarray(matrix), starts[order], counts[order])
        for kind in ("flat", "ivf"):
            searcher = Searcher(store, ChamferBaseline(), CoarseConfig(kind=kind, nlist=2, nprobe=2),
                                persist_coarse=False)
            pos, sims = searcher.coarse.search(q, len(ids))
            np.testing.assert_allclose(sims, np.sort(want)[::-1], rtol=1e-5, atol=1e-6)
        with pytest.raises(IndexError, match="selects rows"):
            matrix[0:2, :4]
        with pytest.raises(ValueError, match="without a copy"):
            matrix.__array__(copy=False)
    reader = IndexStore.open(path, space())
    with IndexStore.open(path, space(), writable=True) as store:  # appends after a reopen, seen by a reader
        more = unit(rng, 5, R, D)
        store.add("late", more)
    reader.refresh()
    s, c = (int(a[-1]) for a in reader.row_layout()[1:])
    np.testing.assert_allclose(reader.descriptor_matrix()[s: s + c],
                               faiss_reference(book, video_descriptors(more.astype(np.float16).astype(np.float32)))[1],
                               atol=1e-5)
    reader.close()
    manifest = json.loads((path / "manifest.json").read_text())
    for broken in ({**manifest, "format": FORMAT_INT8}, {k: v for k, v in manifest.items() if k != "desc_codebook"}):
        (path / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(CorruptFileError, match="a descriptor codebook"):
            IndexStore.open(path)
    (path / "manifest.json").write_text(json.dumps(manifest))
    desc = path / "g1.desc"
    raw = bytearray(desc.read_bytes())
    raw[3] ^= 0xFF
    desc.write_bytes(bytes(raw))
    with IndexStore.open(path) as store, pytest.raises(CorruptFileError, match="descriptor of .* damaged"):
        store.descriptor_matrix()
    (path / "desc-codebook.npz").write_bytes(b"x")
    with pytest.raises(CorruptFileError, match="desc-codebook.npz cannot be read"):
        IndexStore.open(path)
    with pytest.raises(ValueError, match="desc_codebook codes 64-dimensional vectors"):
        IndexStore.create(tmp_path / "y", space(), (R, 32), desc_codebook=book)


def test_a_build_codes_descriptor_rows_with_a_codebook_of_its_first_videos(tmp_path, capsys):
    """``:rowsM``: the rows' codebook is trained on the descriptor rows (two-frame and one-frame)
    of the videos the frames' codebook reads, the index made with both, and ``--storage`` of an
    existing index compared with both parts."""
    from hapvr.errors import InputError
    from hapvr.retrieval import building

    rng = np.random.default_rng(3)
    items = [(f"v{i}", unit(rng, 20, 9, D), []) for i in range(40)]
    logged = []
    (frames, rows), head = building.train_codebook(iter(items), "pq16:rows8", D, sample=9 * 20 * 30, log=logged.append)
    assert len(head) == 30 and frames.m == 16 and rows.m == 8 and rows.rotation is None
    assert logged[1].startswith("descriptor rows' codebook pq8 trained on 900 rows")  # 30 x (10 + 20)
    (none, int8_rows), _ = building.train_codebook(iter(items), "int8:rows16", D, log=logged.append)
    assert none is None and int8_rows.m == 16
    with IndexStore.create(tmp_path / "i", space(), (9, D), storage="pq", codebook=frames, desc_codebook=rows) as store:
        store.add_many((v, x) for v, x, _ in head)
        assert (tmp_path / "i" / "g0.desc").stat().st_size == 30 * 10 * 8
    building.check_against(tmp_path / "i", False, "pq16:rows8")
    for text in ("pq16:", "pq16:rows08", "pq016", "float16:rows8:rows8"):
        with pytest.raises(ValueError, match="expected float16|rowsM with M in"):
            parse_storage(text)
    assert parse_storage("opq64:rows16") == ("pq", 64, True) and coded_rows("opq64:rows16") == 16
    from hapvr.index import main as index_main

    assert index_main(["info", "--index", str(tmp_path / "i")]) == 0
    assert "30 videos, frames stored as pq16, descriptor rows as pq8" in capsys.readouterr().out
    with pytest.raises(InputError, match="stores its frames as pq16:rows8; build a new index for pq16"):
        building.check_against(tmp_path / "i", False, "pq16")


def test_a_large_build_stores_int8_unless_told(tmp_path, capsys, monkeypatch):
    """From LARGE_COLLECTION inputs a new index stores int8 frames (said in one line); --storage
    float16 keeps float16; below it float16."""
    import shutil

    import hapvr.retrieval.building as building
    from hapvr.data.media import clip_paths
    from hapvr.index import main as index_main

    assert building.default_storage(building.LARGE_COLLECTION - 1) == "float16"
    assert building.default_storage(building.LARGE_COLLECTION) == "int8"
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("v2s", "v1"):
        shutil.copy(clip_paths()[name], videos)
    monkeypatch.setattr(building, "LARGE_COLLECTION", 2)
    for argv, storage in (([], "int8"), (["--storage", "float16"], "float16")):
        index = tmp_path / storage
        assert index_main(["build", "--videos", str(videos), "--index", str(index), "--no-progress", *argv]) == 0
        assert ("frames stored as int8: the default for" in capsys.readouterr().err) == (storage == "int8")
        assert read_manifest(index)["storage_dtype"] == storage
    monkeypatch.setattr(building, "LARGE_COLLECTION", 3)
    assert index_main(["build", "--videos", str(videos), "--index", str(tmp_path / "small"), "--no-progress"]) == 0
    assert read_manifest(tmp_path / "small")["storage_dtype"] == "float16"


def test_index_build_trains_a_codebook_on_its_first_videos(tmp_path, capsys):
    """``--storage pq8``: the codebook is trained on the first videos' region vectors (those videos
    are then added without a second extraction), kept in the folder and used by later adds."""
    import shutil

    from hapvr.data.media import clip_paths
    from hapvr.index import main as index_main
    from hapvr.search import main as search_main

    clips = clip_paths()
    videos = tmp_path / "videos"
    videos.mkdir()
    names = sorted(clips)
    for name in names[:-1]:
        shutil.copy(clips[name], videos / f"{name}.mp4")
    index = tmp_path / "i"
    assert index_main(["build", "--videos", str(videos), "--index", str(tmp_path / "r"), "--storage", "pq8:rows8",
                       "--no-progress"]) == 2  # 6 short clips: too few descriptor rows for a rows' codebook
    assert "error: --storage rows8: the descriptor rows' codebook is trained on the descriptor rows of the first videos, and " \
           "these give 55 (at least 256)" in capsys.readouterr().err
    assert index_main(["build", "--videos", str(videos), "--index", str(index), "--storage", "pq8", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "codebook pq8 (8 bytes a region vector) trained on" in err and "few for a good codebook" in err
    assert "WARNING clustering" not in err  # faiss's own warning replaced by that line
    with IndexStore.open(index) as store:
        assert store.storage == "pq" and store.codebook.m == 8 and len(store) == len(names) - 1
        frames = sum(store.length(v) for v in store.ids())
        assert store._frame_bytes == 9 * 8 and (index / "g0.frames").stat().st_size == frames * 9 * 8
    assert index_main(["add", "--videos", clips[names[-1]], "--index", str(index), "--no-progress"]) == 0
    assert index_main(["info", "--index", str(index)]) == 0
    assert "frames stored as pq8" in capsys.readouterr().out
    assert search_main(["--index", str(index), clips[names[0]], "--top", "3"]) == 0
    first = [line for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["1"]]
    assert first and first[0].split()[-1] == names[0]  # a video is found first by itself
    assert index_main(["build", "--videos", str(videos), "--index", str(index), "--storage", "int8"]) == 2
    assert "stores its frames as pq8; build a new index for int8" in capsys.readouterr().err
    assert index_main(["build", "--videos", str(videos), "--index", str(index), "--storage", "pq8:rows7"]) == 2
    assert "the descriptor rows' part of a storage is rowsM with M in 8, 16" in capsys.readouterr().err
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(clips[names[0]], one / "a.mp4")
    assert index_main(["build", "--videos", str(one), "--index", str(tmp_path / "j"), "--storage", "pq128",
                       "--no-progress"]) == 2
    assert "error: --storage pq128: the codebook is trained on the region vectors of the first videos" in \
        capsys.readouterr().err
    assert not (tmp_path / "j").exists() or not any((tmp_path / "j").iterdir())
