"""The trainer's objective (eq. 15 on a padded batch of edited clips)."""

import pytest
import torch

from hapvr.losses import FrameQuadLinearAPLoss, HAPVRObjective, frame_pseudo_labels
from hapvr.ops import quadlinear_ap
from hapvr.training.config import TrainConfig
from hapvr.training.objective import ObjectiveInputs, build_objective, objective_inputs


# The trainer's former padding workaround, kept verbatim as the oracle of the padded batch: the
# frame term computed outside the loss, with rank-based pseudo-labels on each target's length.
def old_frame_pseudo_labels(teacher, lengths, pairs, r_t, r_b):
    a, b = pairs[:, 0], pairs[:, 1]
    T = teacher.shape[1]
    sim = torch.bmm(teacher[a].float(), teacher[b].float().transpose(1, 2))
    col_ok = torch.arange(T, device=sim.device)[None, :] < lengths[b][:, None]
    row_ok = torch.arange(T, device=sim.device)[None, :] < lengths[a][:, None]
    sim = sim.masked_fill(~col_ok[:, None, :], float("-inf"))
    rank = sim.argsort(-1, descending=True).argsort(-1)
    Lb = lengths[b].to(torch.float64)
    n_pos = torch.clamp(torch.round(Lb * r_t), min=1).long()[:, None, None]
    n_neg = torch.clamp(torch.round(Lb * r_b), min=1).long()[:, None, None]
    labels = torch.full_like(rank, -1)
    labels = torch.where(rank < n_pos, torch.ones_like(rank), labels)
    labels = torch.where((rank >= lengths[b][:, None, None] - n_neg) & (rank >= n_pos), torch.zeros_like(rank), labels)
    valid = row_ok[:, :, None] & col_ok[:, None, :]
    return torch.where(valid, labels, torch.full_like(labels, -1)).to(torch.int8)


def old_objective(cfg, x):
    common = dict(lambda_v=cfg.lambda_v, lambda_s=cfg.lambda_s, lambda_reg=cfg.lambda_r, delta_v=cfg.delta_v,
                  rho_v=cfg.rho_v, delta_f=cfg.delta_f, rho_f=cfg.rho_f, r_t=cfg.r_t, r_b=cfg.r_b, tau=cfg.tau)
    N = x.positives.shape[0]
    pairs = (x.positives & ~torch.eye(N, dtype=torch.bool)).nonzero()
    labels = old_frame_pseudo_labels(x.teacher, x.lengths, pairs, cfg.r_t, cfg.r_b)
    T = x.frame_maps.shape[-1]
    res = quadlinear_ap(x.frame_maps[pairs[:, 0], pairs[:, 1]].reshape(-1, T), labels.reshape(-1, T),
                        cfg.delta_f, cfg.rho_f)
    risk = res.risk.view(len(pairs), -1)
    ok = res.valid.view(len(pairs), -1).to(risk.dtype)
    n = ok.sum(1)
    per_pair = (risk * ok).sum(1) / n.clamp(min=1)
    frame = torch.where(n > 0, per_pair, 0.0).sum() / (n > 0).sum().clamp(min=1).to(risk.dtype)
    total, parts = HAPVRObjective(lambda_f=0.0, **common)(x.video / 2 + 0.5, x.positives.long(),
                                                          raw=x.raw * x.raw_mask)
    return total + cfg.lambda_f * frame, dict(parts, frame_ap=frame.detach())


def padded_batch(N=8, T=7, Dt=6, seed=0):
    """A training batch as the trainer builds it: two clips per video, padded to the longest clip
    (student maps 0 on padding, teacher vectors L2-normalised, 0 on padding)."""
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    lengths[0], lengths[3] = T, 2
    inside = torch.arange(T)[None, :] < lengths[:, None]
    frame_maps = torch.rand(N, N, T, T, generator=g) * inside[:, None, :, None] * inside[None, :, None, :]
    teacher = torch.nn.functional.normalize(torch.randn(N, T, Dt, generator=g), dim=-1) * inside[..., None]
    video = torch.rand(N, N, generator=g) * 2 - 1
    raw = torch.randn(N, N, 2, 2, generator=g) * 1.5
    raw_mask = torch.rand(N, N, 2, 2, generator=g) > 0.2
    ids = torch.arange(N) // 2
    positives = ids[:, None] == ids[None, :]
    return ObjectiveInputs(video, frame_maps, raw, raw_mask, lengths, positives, teacher)


def _with_grad(x):
    return ObjectiveInputs(x.video.clone().requires_grad_(True), x.frame_maps.clone().requires_grad_(True),
                           x.raw.clone().requires_grad_(True), x.raw_mask, x.lengths, x.positives, x.teacher)


def test_padded_batch_objective_equals_former_workaround_and_unpadded_pairs():
    cfg = TrainConfig()
    x = padded_batch()
    assert bool((x.lengths < x.frame_maps.shape[-1]).any())  # the padded case
    new_in, old_in = _with_grad(x), _with_grad(x)
    total, parts = build_objective(cfg)(new_in)
    old_total, old_parts = old_objective(cfg, old_in)
    assert set(parts) == set(old_parts) | {"loss"}
    for name, value in old_parts.items():
        assert parts[name] == pytest.approx(float(value), rel=1e-6, abs=1e-7), name
    torch.testing.assert_close(total, old_total)
    total.backward()
    old_total.backward()
    for name in ("video", "frame_maps", "raw"):
        torch.testing.assert_close(getattr(new_in, name).grad, getattr(old_in, name).grad, msg=name)
    assert new_in.frame_maps.grad.abs().sum() > 0
    # The frame term equals the loss on each positive pair cut to its true lengths, one at a time.
    N = x.lengths.shape[0]
    loss = FrameQuadLinearAPLoss(cfg.delta_f, cfg.rho_f, cfg.r_t, cfg.r_b)
    values = []
    for a in range(N):
        for b in range(N):
            if a != b and x.positives[a, b]:
                La, Lb = int(x.lengths[a]), int(x.lengths[b])
                # Clips a and b as a 2-clip batch with the pair's own frame counts.
                sims = torch.zeros(2, 2, La, Lb)
                sims[0, 1] = x.frame_maps[a, b, :La, :Lb]
                t = torch.zeros(2, 2, La, Lb)
                t[0, 1] = x.teacher[a, :La] @ x.teacher[b, :Lb].T
                lab = frame_pseudo_labels(t[0, 1], cfg.r_t, cfg.r_b)
                if ((lab == 1).any(-1) & (lab == 0).any(-1)).any():  # the pair has a rankable frame
                    values.append(loss(sims, t, torch.tensor([[1, 1], [0, 1]])))
    expected = torch.stack(values).mean()
    assert parts["frame_ap"] == pytest.approx(float(expected), rel=1e-6)


def test_full_length_batch_needs_no_lengths():
    cfg = TrainConfig()
    x = padded_batch()
    T = x.frame_maps.shape[-1]
    full = ObjectiveInputs(x.video, torch.rand_like(x.frame_maps), x.raw, x.raw_mask, torch.full_like(x.lengths, T),
                           x.positives, torch.nn.functional.normalize(torch.randn_like(x.teacher), dim=-1))
    total, parts = build_objective(cfg)(full)
    ref_total, _ = HAPVRObjective(lambda_f=cfg.lambda_f)(full.video / 2 + 0.5, full.positives.long(), raw=full.raw * full.raw_mask,
                             frame_sims=full.frame_maps, teacher=full.teacher)
    assert parts["loss"] == pytest.approx(float(ref_total), rel=1e-6)


def _batch(lengths, D=16, Dt=6):
    from hapvr.training.batches import Batch

    lengths = torch.tensor(lengths)
    N, T = len(lengths), int(lengths.max())
    inside = torch.arange(T)[None, :] < lengths[:, None]
    feats = torch.randn(N, T, 9, D) * inside[..., None, None]
    teacher = torch.nn.functional.normalize(torch.randn(N, T, Dt), dim=-1) * inside[..., None]
    ids = torch.arange(N) // 2
    return Batch(feats, teacher, lengths, ids[:, None] == ids[None, :], ids)


@pytest.mark.parametrize("lengths", [[6, 2, 3, 5], [3, 2]])
def test_short_clips_get_their_teacher_vectors_repeated_like_the_model_repeats_them(lengths):
    from hapvr.models import VideoSimilarityModel

    model = VideoSimilarityModel(16)
    batch = _batch(lengths)
    out = model(batch.features, query_lengths=batch.lengths)
    x = objective_inputs(out, batch, model.min_frames, torch.device("cpu"))
    assert x.teacher.shape[1] == x.frame_maps.shape[-1]
    for k, L in enumerate(lengths):
        n = int(x.lengths[k])
        assert n == (L if L >= 4 else L * -(-4 // L))
        frames = torch.arange(n) % L  # the clip's frames, self-concatenated
        torch.testing.assert_close(x.teacher[k, :n], batch.teacher[k, frames])
        assert torch.all(x.teacher[k, n:] == 0)
        # The student's maps see the same repetition: target frame y is clip frame y mod L.
        torch.testing.assert_close(x.frame_maps[0, k, :, :n], x.frame_maps[0, k][:, frames])
    total, parts = build_objective(TrainConfig())(x)
    assert torch.isfinite(total) and parts["frame_ap"] > 0


# --- cross-rank negatives (--gather-negatives) ----------------------------------------------


def test_rank_rows_of_the_gathered_objective_average_to_the_whole_batch_objective():
    """Two simulated ranks of N clips each: rank r's objective on its rows ``[N, 2N]`` at offset
    ``r N``. Every clip pair of a video lives on one rank, so the mean over ranks of each ranking
    term equals the term on the whole ``[2N, 2N]`` batch (the regulariser, a sum, adds up)."""
    cfg = TrainConfig()
    x = padded_batch(N=8, T=6)
    N = 4
    full = ObjectiveInputs(x.video, x.frame_maps, x.raw, x.raw_mask, torch.full_like(x.lengths, 6), x.positives,
                           torch.nn.functional.normalize(torch.randn_like(x.teacher), dim=-1))
    objective = build_objective(cfg)
    _, whole = objective(full)
    ranks = []
    for r in range(2):
        rows = slice(r * N, (r + 1) * N)
        ranks.append(objective(ObjectiveInputs(full.video[rows], full.frame_maps[rows], full.raw[rows],
                                               full.raw_mask[rows], full.lengths[rows],
                                               full.positives[rows].to(torch.int8), full.teacher[rows], r * N))[1])
    for name in ("video_ap", "infonce", "sshn", "frame_ap"):
        assert (ranks[0][name] + ranks[1][name]) / 2 == pytest.approx(whole[name], rel=1e-5), name
    assert ranks[0]["regularizer"] + ranks[1]["regularizer"] == pytest.approx(whole["regularizer"], rel=1e-5)
    # The self column must be the rank's own clip: at offset 0 rank 1's rows would be wrong.
    wrong = objective(ObjectiveInputs(full.video[N:], full.frame_maps[N:], full.raw[N:], full.raw_mask[N:],
                                      full.lengths[N:], full.positives[N:].to(torch.int8), full.teacher[N:], 0))[1]
    assert wrong["sshn"] != pytest.approx(ranks[1]["sshn"], rel=1e-3)
    with pytest.raises(ValueError, match="self_offset must be an int in \\[0, M - Q\\] = \\[0, 4\\]"):
        objective(ObjectiveInputs(full.video[N:], full.frame_maps[N:], full.raw[N:], full.raw_mask[N:],
                                  full.lengths[N:], full.positives[N:].to(torch.int8), full.teacher[N:], 5))


@pytest.fixture
def one_process_group():
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_gathered_objective_with_world_1_equals_the_normal_objective(one_process_group):
    import copy

    from hapvr.models import VideoSimilarityModel
    from hapvr.training.gather import GatheredSimilarity, gathered_labels

    cfg = TrainConfig()
    batch = _batch([6, 2, 5, 6, 3, 4])
    batch.guests = torch.tensor([-1, -1, -1, 0, -1, -1])  # clip 3 has video 0 pasted in
    batch.positives[3, :2] = batch.positives[:2, 3] = True
    model = VideoSimilarityModel(16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    gathered_model = GatheredSimilarity(copy.deepcopy(model))
    objective = build_objective(cfg)

    out = model(batch.features, query_lengths=batch.lengths)
    total, parts = objective(objective_inputs(out, batch, model.min_frames, torch.device("cpu")))
    total.backward()

    labels = gathered_labels(batch.positives, batch.video_index, batch.guests)
    assert labels.dtype == torch.int8 and torch.equal(labels, batch.positives.to(torch.int8))
    g_out = gathered_model(batch.features, batch.lengths)
    assert g_out.video.shape == (6, 6) and GatheredSimilarity.offset(6) == 0
    g_total, g_parts = objective(objective_inputs(g_out, batch, model.min_frames, torch.device("cpu"), labels, 0))
    g_total.backward()

    torch.testing.assert_close(g_out.video, out.video)
    assert g_parts == pytest.approx(parts, rel=1e-6)
    for (name, p), q in zip(model.named_parameters(), gathered_model.model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert sum(float(p.grad.abs().sum()) for p in model.parameters()) > 0


def test_frame_labels_choose_the_frame_level_pairs_only():
    x = padded_batch(seed=5)
    N = x.positives.shape[0]
    labels = x.positives.long()
    labels[0, 4] = labels[4, 0] = 1  # clip 4 shows video 0 (a pasted guest): a video-level positive
    frame_pairs = x.positives.long()  # ... left out of the frame level
    obj = HAPVRObjective()
    kw = dict(raw=x.raw * x.raw_mask, frame_sims=x.frame_maps, teacher=x.teacher, lengths=x.lengths)
    sim = x.video / 2 + 0.5
    _, with_guest = obj(sim, labels, **kw)
    _, restricted = obj(sim, labels, frame_labels=frame_pairs, **kw)
    _, plain = obj(sim, x.positives.long(), **kw)
    # the frame level now equals the one of the batch without the guest pair ...
    torch.testing.assert_close(restricted["frame_ap"], plain["frame_ap"], rtol=0, atol=0)
    assert not torch.equal(with_guest["frame_ap"], plain["frame_ap"])  # (the guest pair does count otherwise)
    # ... while the video level still sees the guest pair as a positive
    torch.testing.assert_close(restricted["video_ap"], with_guest["video_ap"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="frame_labels must be the local"):
        obj(sim, labels, frame_labels=frame_pairs[:, :N - 1], **kw)

