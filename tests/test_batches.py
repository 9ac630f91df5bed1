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
