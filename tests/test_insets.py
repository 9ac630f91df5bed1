"""Inset detection (hapvr/data/insets.py) on synthetic videos: a picture-in-picture inset, static
borders, a two-up stack, and a plain video that must give nothing. Textures and places are
fresh random draws each run (seed printed by the ``fresh_seed`` fixture)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hapvr.data.insets import Inset, InsetConfig, detect_insets, line_responses

H = W = 192
T = 8


def texture(rng: np.random.Generator, h: int, w: int, t: int = T, step: int = 3) -> np.ndarray:
    """A moving, smooth random texture ``[t, h, w]`` in 0-255: coarse noise upsampled bilinearly,
    panned by ``step`` pixels a frame (so its own edges move, as filmed content does)."""
    span = w + t * abs(step)
    coarse = torch.from_numpy(rng.uniform(0, 255, size=(1, 1, h // 8 + 2, span // 8 + 2)).astype(np.float32))
    canvas = torch.nn.functional.interpolate(coarse, size=(h, span), mode="bilinear", align_corners=False)[0, 0]
    starts = [i * step if step >= 0 else (t - 1 - i) * -step for i in range(t)]
    return np.stack([canvas[:, s:s + w].numpy() for s in starts])


def rgb(gray: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.repeat(gray[:, None], 3, axis=1).round().clip(0, 255).astype(np.uint8))


def test_a_plain_video_has_no_inset(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    for _ in range(3):
        assert detect_insets(rgb(texture(rng, H, W))) == []


@pytest.mark.parametrize("side", [0.35, 0.5, 0.7])
def test_a_pasted_inset_is_found(fresh_seed, side):
    rng = np.random.default_rng(fresh_seed)
    host = texture(rng, H, W)
    h = w = int(side * H)
    top, left = int(rng.integers(0, H - h)), int(rng.integers(0, W - w))
    host[:, top:top + h, left:left + w] = texture(rng, h, w, step=-2)  # another video, its own motion
    found = detect_insets(rgb(host))
    assert [f.kind for f in found] == ["picture-in-picture"], found
    assert found[0].iou((top, left, h, w)) >= 0.85, (found[0], (top, left, h, w))


def test_borders_and_an_inset_inside_them(fresh_seed):
    rng = np.random.default_rng(fresh_seed)
    frames = np.full((T, H, W), 8.0, np.float32)  # letterbox: dark bars above and below
    frames[:, 24:H - 24] = texture(rng, H - 48, W)
    found = detect_insets(rgb(frames))
    assert found == [Inset("border", 24, 0, H - 48, W, 1.0)]
    frames[:, 60:120, 50:130] = texture(rng, 60, 80, step=-2)
    kinds = [f.kind for f in detect_insets(rgb(frames))]
    assert kinds == ["border", "picture-in-picture"]
    pip = detect_insets(rgb(frames))[1]
    assert pip.iou((60, 50, 60, 80)) >= 0.85
    # a flat band on one side only (a sky) is no border
    sky = texture(rng, H, W)
    sky[:, :30] = 200.0
    assert all(f.kind != "border" for f in detect_insets(rgb(sky)))


@pytest.mark.parametrize("axis", [0, 1])
def test_a_two_up_stack_gives_its_halves(fresh_seed, axis):
    """Two videos of different looks side by side (one darker, 0-127, the other brighter). A
    stack's seam must stand out along each eighth of its length in three frames of four
    (two_up's lower quartile): two halves drawn from the same range of brightness meet at the same
    grey along a stretch of the seam often enough that about 1 draw in 150 was not split (9 of
    1,200; 0 of 3,000 with the ranges apart)."""
    rng = np.random.default_rng(fresh_seed)
    cut = int(rng.integers(int(0.35 * H), int(0.65 * H)))
    a, b = 0.5 * texture(rng, H, W), 128 + 0.5 * texture(rng, H, W, step=-3)
    if rng.random() < 0.5:
        a, b = b, a
    frames = a.copy()
    if axis == 0:
        frames[:, cut:] = b[:, cut:]
        want = [(0, 0, cut, W), (cut, 0, H - cut, W)]
    else:
        frames[:, :, cut:] = b[:, :, cut:]
        want = [(0, 0, H, cut), (0, cut, H, W - cut)]
    found = detect_insets(rgb(frames))
    assert [f.kind for f in found] == ["stack", "stack"], found
    for f, w in zip(found, want):
        assert f.iou(w) >= 0.95, (f, w)


def test_persistent_lines_only_count_when_they_persist(fresh_seed):
    """A line in one frame only is not a persistent edge; a line in every frame is."""
    rng = np.random.default_rng(fresh_seed)
    frames = texture(rng, H, W)
    frames[0, :, 100:] += 80  # a jump at x = 99 | 100 in one frame
    v, _ = line_responses(frames)
    assert v[:, 99].mean() < 4 * np.median(v) + 1
    frames[:, :, 100:] += 80  # ... and in every frame
    v, _ = line_responses(frames)
    assert v[:, 99].mean() > 10 * max(np.median(v), 0.5)


def _lines_reference(gray: np.ndarray, persistence: float) -> tuple[np.ndarray, np.ndarray]:
    """line_responses written out with numpy: jumps, minus the mean of the jumps two pixels to
    either side (wrapping), clipped at 0, at the ``persistence`` quantile over time."""
    gx, gy = np.abs(np.diff(gray, axis=2)), np.abs(np.diff(gray, axis=1))
    tx = np.clip(gx - 0.5 * (np.roll(gx, 2, axis=2) + np.roll(gx, -2, axis=2)), 0, None)
    ty = np.clip(gy - 0.5 * (np.roll(gy, 2, axis=1) + np.roll(gy, -2, axis=1)), 0, None)
    return np.quantile(tx, persistence, axis=0), np.quantile(ty, persistence, axis=0)


def _rectangle_reference(v: np.ndarray, h: np.ndarray, H: int, W: int, cfg: InsetConfig):
    """picture_in_picture's choice written out as loops over candidate rectangles: ``(top, left,
    height, width, weakest side's contrast)`` or None."""
    from hapvr.data.insets import _peaks

    level = max(float(np.median(np.concatenate([v.ravel(), h.ravel()]))), 0.5)
    xs = sorted(set([-1, W - 1] + _peaks(v.mean(axis=0), cfg.candidates)))
    ys = sorted(set([-1, H - 1] + _peaks(h.mean(axis=1), cfg.candidates)))
    best = None
    for i, x0 in enumerate(xs):
        for x1 in xs[i + 1:]:
            for j, y0 in enumerate(ys):
                for y1 in ys[j + 1:]:
                    width, height = x1 - x0, y1 - y0
                    if not (cfg.min_side * W <= width <= cfg.max_side * W and cfg.min_side * H <= height <= cfg.max_side * H):
                        continue
                    sides = [(v[y0 + 1:y1 + 1, x0].mean(), height) if x0 >= 0 else None,
                             (v[y0 + 1:y1 + 1, x1].mean(), height) if x1 < W - 1 else None,
                             (h[y0, x0 + 1:x1 + 1].mean(), width) if y0 >= 0 else None,
                             (h[y1, x0 + 1:x1 + 1].mean(), width) if y1 < H - 1 else None]
                    inside = [(m / level, n) for m, n in (s for s in sides if s is not None)]
                    if len(inside) < 2 or min(m for m, _ in inside) < cfg.min_contrast:
                        continue
                    evidence = sum(m * n for m, n in inside)
                    if best is None or evidence > best[0] + 1e-9:
                        best = (evidence, (y0 + 1, x0 + 1, height, width, min(m for m, _ in inside)))
    return None if best is None else best[1]


def test_line_responses_and_the_rectangle_search_equal_their_references(fresh_seed):
    """On fresh random frames with and without a darker pasted block, at several contrasts: the
    torch line responses match numpy's, and the search over every rectangle at once picks the
    rectangle the loops pick."""
    rng = np.random.default_rng(fresh_seed)
    found = 0
    for i in range(60):
        T, Hh, Ww = int(rng.integers(1, 10)), int(rng.integers(16, 90)), int(rng.integers(16, 90))
        g = rng.uniform(0, 255, (T, Hh, Ww)).astype(np.float32)
        if i % 2:
            h, w = int(rng.integers(5, Hh)), int(rng.integers(5, Ww))
            t, l = int(rng.integers(0, Hh - h + 1)), int(rng.integers(0, Ww - w + 1))
            g[:, t:t + h, l:l + w] = rng.uniform(0, 60, (T, h, w))
        cfg = InsetConfig(min_contrast=float(rng.uniform(0.5, 4)), persistence=float(rng.choice([0.0, 0.25, 0.5, 1.0])))
        v, hz = line_responses(g, cfg.persistence)
        rv, rh = _lines_reference(g, cfg.persistence)
        np.testing.assert_allclose(v, rv, atol=1e-3)
        np.testing.assert_allclose(hz, rh, atol=1e-3)
        from hapvr.data.insets import picture_in_picture

        got = picture_in_picture(g, cfg, (rv, rh))
        want = _rectangle_reference(rv, rh, Hh, Ww, cfg)
        if want is None:
            assert got is None, got
            continue
        found += 1
        assert (got.top, got.left, got.height, got.width) == want[:4] and got.score == pytest.approx(want[4])
    assert found >= 10  # the search was exercised, not only its empty answer


def test_a_long_video_is_looked_at_in_max_frames(fresh_seed):
    """100 frames with a pasted inset: found, from 32 of them spread evenly, as from those alone."""
    rng = np.random.default_rng(fresh_seed)
    host = texture(rng, 96, 96, t=100, step=1)
    host[:, 20:70, 30:80] = texture(rng, 50, 50, t=100, step=-1)
    frames = rgb(host)
    found = detect_insets(frames)
    assert [f.kind for f in found] == ["picture-in-picture"] and found[0].iou((20, 30, 50, 50)) >= 0.85, found
    picked = frames[np.linspace(0, 99, 32).round().astype(np.int64)]
    assert detect_insets(picked) == found


def test_bad_frames_are_refused():
    with pytest.raises(ValueError, match=r"frames must be \[T, 3, H, W\] or \[T, H, W\]"):
        detect_insets(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match="at least one 16 x 16 frame"):
        detect_insets(torch.zeros(2, 3, 8, 32))
    assert InsetConfig().min_side == 0.2


def _write(path, frames: np.ndarray, fps: int = 4) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[3], frames.shape[2], "yuv420p"
        s.bit_rate = 4_000_000
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f.transpose(1, 2, 0)), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def pip_pair(folder, seed: int, side: int = 154) -> tuple[int, int, int]:
    """Writes ``clip.mp4`` (real footage, 256 x 256, 4 fps) and ``pip.mp4`` (other real footage
    with the clip pasted at ``side`` pixels) into ``folder``; returns the inset's (top, left, side)."""
    from hapvr.data.media import clip_paths
    from hapvr.data.video import center_crop, decode_video

    rng = np.random.default_rng(seed)
    paths = clip_paths()  # real footage: the model tells real scenes apart, not smooth noise
    clip = center_crop(decode_video(paths["bikes"], 4)[:12], 256).numpy().astype(np.float32)
    host = center_crop(decode_video(paths["bigbuckbunny"], 4)[:12], 256).numpy().astype(np.float32)
    n = min(len(clip), len(host))
    clip, host = clip[:n], host[:n].copy()
    top, left = int(rng.integers(0, 256 - side)), int(rng.integers(0, 256 - side))
    small = torch.nn.functional.interpolate(torch.from_numpy(clip), size=(side, side), mode="bilinear",
                                            antialias=True).numpy()
    host[:, :, top:top + side, left:left + side] = small
    _write(folder / "clip.mp4", clip.round().clip(0, 255).astype(np.uint8))
    _write(folder / "pip.mp4", host.round().clip(0, 255).astype(np.uint8))
    return top, left, side


def test_compare_finds_a_copy_inside_a_picture_in_picture_inset(tmp_path, fresh_seed):
    """A clip pasted at 0.6 of the side into another video: compare with --insets finds the inset
    (its rectangle in the JSON) and scores the pair higher than the whole frames do."""
    import json

    import hapvr
    from hapvr.compare import main as compare_main

    top, left, side = pip_pair(tmp_path, fresh_seed)
    model = hapvr.load_model(fps=4)
    plain = hapvr.compare_videos(str(tmp_path / "clip.mp4"), str(tmp_path / "pip.mp4"), model)
    found = hapvr.compare_videos(str(tmp_path / "clip.mp4"), str(tmp_path / "pip.mp4"), model, insets=True)
    assert plain.target_view is None and found.query_view is None
    assert found.target_view is not None and found.target_view.kind == "picture-in-picture"
    assert found.target_view.iou((top, left, side, side)) >= 0.85, found.target_view
    assert found.similarity > plain.similarity + 0.1, (found.similarity, plain.similarity)
    # the command: the rectangle in its JSON; --insets refuses features
    out = tmp_path / "c.json"
    assert compare_main([str(tmp_path / "clip.mp4"), str(tmp_path / "pip.mp4"), "--insets", "--fps", "4",
                         "--json", str(out)]) == 0
    view = json.loads(out.read_text())["target_view"]
    assert view["kind"] == "picture-in-picture" and abs(view["top"] - top) <= 6 and abs(view["left"] - left) <= 6
    assert compare_main(["a", "b", "--features", str(out), "--mirror"]) == 2


def test_extract_insets_keeps_the_views_for_compare_features(tmp_path, fresh_seed, capsys):
    """python -m hapvr.extract --insets (the default model's features): the picture-in-picture
    video's inset view in group hapvr_views, none for the plain clip (an empty group); compare
    --features --insets finds the copy inside the inset, as compare does on the files; a file
    extracted without --insets is refused for --insets with one line."""
    import json

    import h5py

    import hapvr
    from hapvr.compare import main as compare_main
    from hapvr.evaluation.feature_store import FeatureStore
    from hapvr.extract import main as extract_main

    videos = tmp_path / "videos"
    videos.mkdir()
    top, left, side = pip_pair(videos, fresh_seed)
    out = tmp_path / "f.hdf5"
    assert extract_main(["--videos", str(videos), "--output", str(out), "--fps", "4", "--insets", "--no-progress"]) == 0
    with h5py.File(out) as f:
        assert sorted(f) == ["clip", "hapvr_views", "pip"] and sorted(f["hapvr_views"]) == ["clip", "pip"]
        assert len(f["hapvr_views/clip"]) == 0 and sorted(f["hapvr_views/pip"]) == ["1"]
    with FeatureStore(out) as store:
        assert store.ids() == {"clip", "pip"} and store.views("clip") == []
        (view, x), = store.views("pip")
        assert view.kind == "picture-in-picture" and view.iou((top, left, side, side)) >= 0.85, view
        assert x.shape == store.load("pip").shape
    model = hapvr.load_model(fps=4)
    want = hapvr.compare_videos(str(videos / "clip.mp4"), str(videos / "pip.mp4"), model, insets=True)
    js = tmp_path / "c.json"
    assert compare_main(["clip", "pip", "--features", str(out), "--insets", "--json", str(js)]) == 0
    got = json.loads(js.read_text())
    assert got["target_view"] == want.target_view.to_dict() and got["query_view"] is None
    assert got["similarity"] == pytest.approx(want.similarity, abs=1e-4) and got["segments"]
    plain = tmp_path / "plain.hdf5"
    assert extract_main(["--videos", str(videos / "clip.mp4"), "--output", str(plain), "--no-progress"]) == 0
    with FeatureStore(plain) as store:
        assert store.views("clip") is None
    capsys.readouterr()
    assert compare_main(["clip", "clip", "--features", str(plain), "--insets"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --insets: QUERY 'clip' has no inset views in --features {plain} (extract it with "
                   "python -m hapvr.extract --insets)"], err
    assert extract_main(["--videos", str(videos), "--output", str(tmp_path / "r.hdf5"), "--raw", "--insets"]) == 2
    assert not (tmp_path / "r.hdf5").exists()


def test_staged_views_merge_into_a_feature_file_and_read_back_checked(tmp_path, fresh_seed):
    """Parts staged with insets (one with a view, one with none) and one without: merged, the
    first two get their group under hapvr_views (views in order, the empty one empty), the third
    none (None: not looked at); a view of the wrong layout or holding NaN is refused by name."""
    import json

    import h5py

    from hapvr.evaluation.feature_store import FeatureStore
    from hapvr.io.serialization import CorruptFileError
    from hapvr.io.staging import StagedVideos

    rng = np.random.default_rng(fresh_seed)
    x = {v: rng.standard_normal((int(rng.integers(1, 6)), 9, 8)).astype(np.float32) for v in "abc"}
    rect = Inset("picture-in-picture", 10, 20, 100, 120, 12.5)
    views = [rng.standard_normal((int(rng.integers(1, 6)), 9, 8)).astype(np.float32) for _ in range(2)]
    parts = StagedVideos(tmp_path / "parts")
    parts.write("a", x["a"], [(rect.to_dict(), views[0]), (Inset("stack", 0, 0, 5, 5, 4.0).to_dict(), views[1])],
                insets=True)
    parts.write("b", x["b"], [], insets=True)
    parts.write("c", x["c"])
    out = tmp_path / "f.hdf5"
    parts.merge_into(out, {"hapvr_space": "whitened"}, parts.done())
    with FeatureStore(out) as store:
        assert store.ids() == {"a", "b", "c"} and store.views("b") == [] and store.views("c") is None
        got = store.views("a")
        assert [r for r, _ in got] == [rect, Inset("stack", 0, 0, 5, 5, 4.0)]
        for (_, v), want in zip(got, views):
            np.testing.assert_array_equal(v.numpy(), want)
    with h5py.File(out, "a") as f:
        f["hapvr_views/b"].create_dataset("1", data=np.zeros((3, 9, 7), np.float32)).attrs["rect"] = json.dumps(
            rect.to_dict())
        bad = np.array(views[0])
        bad[0, 0, 0] = np.nan
        del f["hapvr_views/a/2"]
        f["hapvr_views/a"].create_dataset("2", data=bad).attrs["rect"] = json.dumps(rect.to_dict())
    with FeatureStore(out) as store:
        with pytest.raises(ValueError, match="view '1' of 'b'.*\\[T, 9, 8\\]"):
            store.views("b")
        with pytest.raises(CorruptFileError, match="view '2' of 'a' holds NaN"):
            store.views("a")
