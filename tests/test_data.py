"""Decoding, corrupt-file handling and every augmentation on tiny synthetic clips."""

import os
import random

import numpy as np
import pytest
import torch

from hapvr.data import augment
from hapvr.data.video import VideoDecodeError, center_crop, decode_video, load_folder


def _clip(T=6, H=64, W=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (T, 3, H, W), generator=g, dtype=torch.uint8)


def _write_video(path, seconds=3, fps=10, size=(64, 48)):
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * fps):
            img = np.full((size[1], size[0], 3), (i * 8) % 256, dtype=np.uint8)
            for p in s.encode(__import__("av").VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.mark.parametrize("edit,expected", [("none", list(range(8))), ("reverse", list(range(8))[::-1]),
                                           ("fast_forward", [0, 2, 4, 6]),
                                           ("slow_motion", [i for i in range(8) for _ in range(2)])])
def test_deterministic_temporal_edits(edit, expected):
    name, idx = augment.temporal_edit_indices(8, random.Random(0), edit=edit)
    assert name == edit and idx.tolist() == expected


def _runs(vals):
    """Maximal runs of consecutive frame indices (i, i + 1, ...)."""
    runs = [[vals[0]]]
    for v in vals[1:]:
        if v == runs[-1][-1] + 1:
            runs[-1].append(v)
        else:
            runs.append([v])
    return runs


def test_pause_holds_one_frame_two_to_four_extra_times():
    for seed in range(50):
        _, idx = augment.temporal_edit_indices(8, random.Random(seed), edit="pause")
        vals = idx.tolist()
        held = [v for v in range(8) if vals.count(v) > 1]
        assert len(held) == 1 and 3 <= vals.count(held[0]) <= 5, vals  # shown once + 2-4 extra times
        assert [v for i, v in enumerate(vals) if i == 0 or v != vals[i - 1]] == list(range(8)), vals


def test_shuffle_dropout_reorders_or_drops_contiguous_segments():
    T, n = 8, 300
    kinds = {"shuffle": 0, "drop": 0, "identity": 0}
    shuffled_runs = set()
    for seed in range(n):
        name, idx = augment.temporal_edit_indices(T, random.Random(seed), edit="shuffle_dropout")
        vals = idx.tolist()
        assert name == "shuffle_dropout" and vals and len(set(vals)) == len(vals), vals
        if len(vals) == T:  # a shuffle: the 2-4 segments, each still in order, in another order
            assert sorted(vals) == list(range(T)), vals
            runs = _runs(vals)
            assert len(runs) <= 4, vals
            if vals == list(range(T)):
                kinds["identity"] += 1
            else:
                kinds["shuffle"] += 1
                shuffled_runs.add(len(runs))
        else:  # a drop: one contiguous segment missing, the rest in its order
            assert vals == sorted(vals) and set(vals) < set(range(T)), vals
            missing = sorted(set(range(T)) - set(vals))
            assert missing == list(range(missing[0], missing[-1] + 1)), vals
            kinds["drop"] += 1
    # both branches are taken, shuffles of 2, 3 and 4 segments occur
    assert kinds["shuffle"] > n // 5 and kinds["drop"] > n // 5, kinds
    assert shuffled_runs == {2, 3, 4}, shuffled_runs
    # A shuffle may draw the original order (chance 1/n! for n segments: about 12% of these edits
    # at T = 8 come out unchanged); most must be real edits.
    assert kinds["identity"] < n // 5, kinds


def test_unknown_edit_is_refused():
    with pytest.raises(ValueError, match="unknown temporal edit"):
        augment.temporal_edit_indices(8, random.Random(1), edit="sideways")


def test_edit_probabilities_are_the_papers():
    assert augment.TEMPORAL_EDITS == {"shuffle_dropout": 0.5, "fast_forward": 0.1, "slow_motion": 0.1,
                                      "reverse": 0.1, "pause": 0.1, "none": 0.1}


def test_weak_view_shape_and_shared_crop():
    x = _clip()
    x[:] = x[0]  # identical frames stay identical: one crop/flip for the whole clip
    v = augment.weak_view(x, random.Random(0))
    assert v.shape == (6, 3, 224, 224) and v.dtype == torch.uint8
    assert all(torch.equal(v[0], v[t]) for t in range(6))


def test_strong_view_shapes_ranges_and_edit():
    v = augment.strong_view(_clip(T=8), random.Random(3))
    assert v.frames.dtype == torch.uint8 and v.frames.shape[1:] == (3, 224, 224)
    assert v.edit in augment.TEMPORAL_EDITS and v.mixed_with is None
    v2 = augment.strong_view(_clip(T=8), random.Random(3), temporal=False)
    assert v2.frames.shape[0] == 8 and v2.edit == "none"


@pytest.mark.parametrize("fn", [augment.overlay_text, augment.overlay_emoji, augment.gaussian_blur])
def test_per_frame_overlays_change_pixels(fn):
    from PIL import Image

    img = Image.fromarray(np.full((96, 96, 3), 128, dtype=np.uint8)) if fn is not augment.gaussian_blur else \
        Image.fromarray(_clip(1, 96, 96)[0].permute(1, 2, 0).numpy())
    before = np.asarray(img).copy()
    after = np.asarray(fn(img, random.Random(5)).convert("RGB"))
    assert after.shape == before.shape and after.dtype == np.uint8 and (after != before).any()


def test_video_in_video_pastes_guest_and_labels_both_positive():
    host = torch.zeros(5, 3, 100, 100, dtype=torch.uint8)
    guest = torch.full((3, 3, 60, 60), 200, dtype=torch.uint8)
    out = augment.video_in_video(host, guest, random.Random(0), scale=(0.3, 0.3))
    assert out.shape == host.shape
    assert int((out[:, 0] == 200).sum(dim=(1, 2))[0]) == 30 * 30  # a 30x30 window in every frame
    cfg = augment.AugmentConfig(p_mixup=1.0)
    sv = augment.strong_view(_clip(T=4), random.Random(0), cfg, guest=_clip(T=4, seed=1), guest_id=7)
    assert sv.mixed_with == 7
    # views: video 0 (weak), video 0 strong with video 7 pasted in, video 7, video 3
    pos = augment.positive_matrix([0, 0, 7, 3], [None, 7, None, None])
    assert pos.tolist() == [[True, True, False, False], [True, True, True, False],
                            [False, True, True, False], [False, False, False, True]]


def test_decode_at_one_fps_and_resize(tmp_path):
    p = tmp_path / "a.mp4"
    _write_video(p, seconds=3, fps=10)
    frames = decode_video(str(p), fps=1.0)
    assert frames.shape == (3, 3, 256, round(256 * 64 / 48)) and frames.dtype == torch.uint8
    assert decode_video(str(p), fps=2.0).shape[0] == 6
    assert center_crop(frames).shape == (3, 3, 224, 224)


def test_corrupt_and_empty_videos_are_skipped_and_reported(tmp_path):
    _write_video(tmp_path / "good.mp4")
    (tmp_path / "corrupt.mp4").write_bytes(os.urandom(2048))
    (tmp_path / "empty.avi").write_bytes(b"")
    messages = []
    videos, report = load_folder(str(tmp_path), log=messages.append)
    assert list(videos) == ["good.mp4"] and report.loaded == ["good.mp4"]
    assert sorted(os.path.basename(p) for p, _ in report.skipped) == ["corrupt.mp4", "empty.avi"]
    assert len(messages) == 2 and all(m.startswith("warning: skipping") for m in messages)
    assert "2 skipped" in report.summary()
    with pytest.raises(VideoDecodeError):
        decode_video(str(tmp_path / "corrupt.mp4"))


def test_folder_of_frames_is_a_video(tmp_path):
    from PIL import Image

    from hapvr.data.video import list_videos

    shots = tmp_path / "shots"
    shots.mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 50 * i, dtype=np.uint8)).save(shots / f"{i:03d}.jpg")
    _write_video(tmp_path / "clip.mp4", seconds=2)
    assert list_videos(str(tmp_path)) == [str(tmp_path / "clip.mp4"), str(shots)]
    videos, report = load_folder(str(tmp_path), log=lambda m: None)
    assert videos["shots"].shape == (3, 3, 256, 384) and not report.skipped


def test_a_mov_edit_list_is_not_a_truncation():
    """perception's v2s.mov keeps v2's 287 samples but its edit list shows 3.3 s: the declared
    duration is the 3.3 s shown (frame counts are trusted for AVI only), and decoding it warns of
    nothing."""
    import av

    from hapvr.data.media import clip_paths
    from hapvr.data.video import decode_video, declared_seconds

    path = clip_paths()["v2s"]
    with av.open(path) as c:
        stream = c.streams.video[0]
        assert stream.frames > 200  # the sample table holds all of v2
        assert declared_seconds(c, stream) == pytest.approx(3.33, abs=0.01)
    warnings = []
    frames = decode_video(path, fps=1.0, warnings=warnings)
    assert frames.shape[0] == 4 and warnings == []
