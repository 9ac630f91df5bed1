"""Training batches drawn from the cached view pool: clip windows, edits and labels."""

import random
from types import SimpleNamespace

import pytest
import torch

from hapvr.training.batches import draw_batch


def _pool(V=5, K=3, T=20, R=2, D=3):
    # feature value = frame index + 1 (0 is padding), so a clip's frame indices can be read back
    frames = torch.arange(1, T + 1, dtype=torch.float32).view(1, 1, T, 1, 1).expand(V, K, T, R, D).clone()
    return SimpleNamespace(features=frames, teacher=frames[..., 0, :].clone(), lengths=torch.full((V,), T),
                           mixed_with=torch.full((V, K), -1), video_ids=[f"v{i}" for i in range(V)])


def _starts(batch):
    idx = batch.features[:, :, 0, 0].long() - 1  # [2B, T] frame index (or -1 on padding)
    return [(int(idx[2 * i, 0]), idx[2 * i + 1][: int(batch.lengths[2 * i + 1])]) for i in range(len(idx) // 2)]


@pytest.mark.parametrize("max_shift", [0.0, 0.25, 1.0])
def test_strong_clip_starts_within_the_shift_of_the_weak_clip(max_shift):
    pool, L = _pool(), 8
    offsets = set()
    rng = random.Random(0)
    for _ in range(60):
        b = draw_batch(pool, rng, 4, L, edits={"none": 1.0}, max_shift=max_shift)
        assert b.lengths.tolist() == [L] * 8
        assert b.positives.equal(torch.block_diag(*[torch.ones(2, 2, dtype=torch.bool)] * 4))
        for a0, strong in _starts(b):
            assert torch.equal(strong, torch.arange(int(strong[0]), int(strong[0]) + L))  # no edit: a window
            offsets.add(int(strong[0]) - a0)
    reach = int(L * max_shift)
    assert offsets <= set(range(-reach, reach + 1))
    assert max(offsets) == reach and min(offsets) == -reach  # the whole range is drawn


def test_teacher_follows_the_same_frames_as_the_features():
    pool = _pool()
    b = draw_batch(pool, random.Random(3), 5, 7)
    for i in range(b.features.shape[0]):
        n = int(b.lengths[i])
        torch.testing.assert_close(b.teacher[i, :n, 0], b.features[i, :n, 0, 0])
        assert not b.features[i, n:].any() and not b.teacher[i, n:].any()


def _sibling_pool(V=5, K=3, T=20):
    """A pool whose last view is each video's sibling; its features are negative frame indices."""
    pool = _pool(V, K + 1, T)
    pool.features[:, K] *= -1
    pool.teacher[:, K] *= -1
    pool.siblings = True
    return pool


def test_sibling_clips_are_related_to_their_video_only_and_never_drawn_as_copies():
    pool, L = _sibling_pool(), 8
    rng = random.Random(1)
    for _ in range(30):
        b = draw_batch(pool, rng, 4, L, edits={"none": 1.0}, siblings=2)
        N = b.features.shape[0]
        assert N == 10 and b.lengths.tolist() == [L] * 10
        first = b.features[:, 0, 0, 0]
        assert bool((first[:8] > 0).all()) and bool((first[8:] < 0).all())  # copies never from the sibling view
        torch.testing.assert_close(b.teacher[:, :, 0], b.features[:, :, 0, 0])
        want_pos = torch.eye(N, dtype=torch.bool)
        want_pos[:8, :8] = torch.block_diag(*[torch.ones(2, 2, dtype=torch.bool)] * 4)
        assert b.positives.equal(want_pos)
        want_rel = torch.zeros(N, N, dtype=torch.bool)
        for k in range(2):  # the siblings of the batch's first two videos, against those videos' two clips
            want_rel[8 + k, 2 * k:2 * k + 2] = want_rel[2 * k:2 * k + 2, 8 + k] = True
        assert b.related.equal(want_rel)
        assert b.video_index[8:].tolist() == b.video_index[[0, 2]].tolist()
        assert b.guests[8:].tolist() == [-1, -1]
    plain = draw_batch(pool, random.Random(2), 4, L)  # a sibling pool without sibling clips
    assert plain.features.shape[0] == 8 and plain.related is None and bool((plain.features[:, 0, 0, 0] > 0).all())


def test_a_sibling_is_related_to_the_clips_that_show_its_video_pasted_in():
    pool = _sibling_pool(V=2, K=2)
    pool.mixed_with[0, 1] = 1  # video 0's strong view shows video 1 pasted in
    b = draw_batch(pool, random.Random(0), 2, 6, siblings=2)
    first = int(b.video_index[0])
    strong0 = 1 if first == 0 else 3  # the strong clip of video 0
    sib1 = 4 if first == 1 else 5  # video 1's sibling: clip 4 when it is the batch's first video, else 5
    assert bool(b.positives[strong0, 2 if first == 0 else 0])  # the pasted guest makes a positive ...
    assert bool(b.related[sib1, strong0]) and bool(b.related[strong0, sib1])  # ... and a related pair of its sibling
    assert not b.positives[4:, :4].any()


def test_sibling_clips_need_a_pool_built_with_siblings():
    with pytest.raises(ValueError, match="siblings > 0 needs a view pool built with siblings"):
        draw_batch(_pool(), random.Random(0), 4, 8, siblings=1)


class _MeanExtractor:
    """A stand-in backbone: each frame's mean colour as its 9 region descriptors."""

    in_dim = 3

    def descriptors(self, x):
        return x.float().mean(dim=(2, 3))[:, None, :].expand(-1, 9, -1)


class _MeanTeacher:
    dim = 3

    def __call__(self, x):
        return x.float().mean(dim=(2, 3))


def test_view_pool_with_siblings_keeps_the_other_views_and_stores_the_sibling_last():
    from hapvr.training.pool import build_view_pool

    g = torch.Generator().manual_seed(0)
    videos = {f"v{i}-0": torch.randint(0, 256, (6, 3, 64, 64), generator=g, dtype=torch.uint8) for i in range(3)}
    siblings = {k: 255 - v for k, v in videos.items()}
    args = (_MeanExtractor(), _MeanTeacher(), 3, 4, 0)
    plain = build_view_pool(videos, *args)
    sib = build_view_pool(videos, *args, siblings=siblings)
    assert not plain.siblings and sib.siblings and sib.desc.shape[1] == 4
    assert torch.equal(sib.desc[:, :3], plain.desc) and torch.equal(sib.mixed_with[:, :3], plain.mixed_with)
    assert bool((sib.mixed_with[:, 3] == -1).all()) and sib.desc[:, 3].abs().sum() > 0
    with pytest.raises(ValueError, match="no sibling as long as its video"):
        build_view_pool(videos, *args, siblings={k: v[:2] for k, v in siblings.items()})


def test_pip_guests_join_the_step_and_are_positives_of_the_mixed_clip():
    V, K, B = 40, 3, 4
    pool = _pool(V, K)
    pool.mixed_with[:, 1:] = (torch.arange(V).view(V, 1) + 5) % V  # every strong view shows video v + 5
    seen_plain = seen_guests = 0
    for seed in range(40):
        plain = draw_batch(pool, random.Random(seed), B, 8)
        b = draw_batch(pool, random.Random(seed), B, 8, guests=True)
        vids, guests = b.video_index.tolist()[::2], b.guests.tolist()
        # the same draws: the first video, every clip's window and edit; only later slots change
        assert vids[0] == plain.video_index.tolist()[0] and len(set(vids)) == B
        torch.testing.assert_close(b.features[:2], plain.features[:2])
        in_step = [guests[2 * i + 1] in vids for i in range(B)]
        seen_plain += sum(plain.guests.tolist()[2 * i + 1] in plain.video_index.tolist()[::2] for i in range(B))
        seen_guests += sum(in_step)
        # a slot taken by a guest is never given away again: the first video's guest stays
        assert in_step[0]
        for i, v in enumerate(vids):
            g = guests[2 * i + 1]
            if g in vids:
                j = vids.index(g)
                assert b.positives[2 * i + 1, 2 * j] and b.positives[2 * j + 1, 2 * i + 1]
        expected = torch.tensor([[a == c or guests[x] == c or guests[y] == a for y, c in enumerate(b.video_index.tolist())]
                                 for x, a in enumerate(b.video_index.tolist())])
        assert torch.equal(b.positives, expected)
    # every strong clip shows a guest here, so each brought guest takes a later clip's slot: at
    # least the first two clips of a step bring theirs; by chance about 3 in 39 are there
    assert seen_guests >= 2 * 40 and seen_plain < 0.25 * 4 * 40
    # excluded videos are never brought in as guests
    for seed in range(20):
        b = draw_batch(pool, random.Random(seed), B, 8, exclude={5, 6, 7}, guests=True)
        assert not {5, 6, 7} & set(b.video_index.tolist())
