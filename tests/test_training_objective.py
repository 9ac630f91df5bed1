"""The trainer's objective (eq. 15 on a padded batch of edited clips)."""

import pytest
import torch

from hapvr.losses import FrameQuadLinearAPLoss, HAPVRObjective, frame_pseudo_labels
from hapvr.training.config import TrainConfig
from hapvr.training.batch_loss import BatchLoss, ObjectiveInputs, as_floats, objective_inputs


# --- brute-force oracle: eq. 15 term by term from the paper's formulas (SPEC section 2) -------
# Plain loops over queries, list entries and frames on 0-d float64 tensors, so that autograd gives
# the reference gradients too. Nothing from hapvr.losses or hapvr.ops is used.


class FloatLoss(BatchLoss):
    """BatchLoss with its parts read as floats (the training loop reads them on logged steps only)."""

    def __call__(self, x):
        total, parts = super().__call__(x)
        assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in parts.values())
        return total, as_floats(parts)


def r_minus(d, delta):
    """Eq. 10."""
    if d >= 0:
        return 2 * d / delta + 1
    if d >= -delta:
        return (d / delta + 1) ** 2
    return d * 0


def qlap_list(scores, labels, delta, rho):
    """Eq. 11 for one ranked list (``labels`` 1 / 0 / -1); None without a positive or a negative."""
    P = [s for s, l in zip(scores, labels) if l == 1]
    N = [s for s, l in zip(scores, labels) if l == 0]
    if not P or not N:
        return None
    total = 0
    for i, si in enumerate(P):
        num = sum(r_minus(sj - si, delta) for sj in N)
        den = 1 + rho * sum(float(sj > si) for j, sj in enumerate(P) if j != i)  # H(s_j - s_i), H(0) = 0
        ratio = num / den
        total = total + ratio / (1 + ratio)  # h(x) = x / (1 + x)
    return total / len(P)


def mean(values):
    return sum(values) / len(values) if values else torch.zeros((), dtype=torch.float64)


def pseudo_labels(values, r_t, r_b):
    """Eq. 14 on one list of teacher similarities: the top max(round(r_t L), 1) are positive, the
    bottom max(round(r_b L), 1) negative (ties join the threshold's side, positive first)."""
    L = len(values)
    ordered = sorted(values, reverse=True)
    top, bottom = ordered[max(round(r_t * L), 1) - 1], ordered[L - max(round(r_b * L), 1)]
    return [1 if v >= top else (0 if v <= bottom else -1) for v in values]


def brute_objective(cfg, video, frame_maps, raw, raw_mask, lengths, positives, teacher, related=None):
    """(total, parts) of eq. 15 on an ``[N, N]`` batch; tensors float64 (leaves for gradients).
    ``related [N, N]``: pairs relevant at the coarser level only (video level: the mean of the
    losses with them as negatives and as positives; InfoNCE and SSHN leave them out)."""
    N = video.shape[0]
    s = video / 2 + 0.5  # training scores in [0, 1]
    video_ap, coarse_ap, nce, sshn = [], [], [], []
    rel = (lambda k, i: False) if related is None else (lambda k, i: bool(related[k, i]) and not positives[k, i])
    for k in range(N):
        row = [s[k, i] for i in range(N)]
        # QuadLinear-AP, video level: the query counts as its own positive (the release's rule)
        r = qlap_list(row, [1 if positives[k, i] else 0 for i in range(N)], cfg.delta_v, cfg.rho_v)
        if r is not None:
            video_ap.append(r)
        r = qlap_list(row, [1 if positives[k, i] or rel(k, i) else 0 for i in range(N)], cfg.delta_v, cfg.rho_v)
        if r is not None:
            coarse_ap.append(r)
        P = [row[i] for i in range(N) if positives[k, i] and i != k]
        Ng = [row[i] for i in range(N) if not positives[k, i] and not rel(k, i)]
        if P:  # InfoNCE (appendix A.3): each positive against the negatives only
            nce.append(mean([-torch.log(torch.exp(p / cfg.tau) / (torch.exp(p / cfg.tau)
                                                                   + sum(torch.exp(n / cfg.tau) for n in Ng)))
                             for p in P]))
        term = -torch.log(torch.clamp(row[k], min=1e-3))  # SSHN: self-similarity ...
        if Ng:  # ... and the hardest negative
            term = term - torch.log(torch.clamp(1 - max(Ng), min=1e-3))
        sshn.append(term)
    frame = []
    for a in range(N):
        for b in range(N):
            if (a == b and not cfg.frame_self_pairs) or (a != b and not positives[a, b]):
                continue  # the release's pairs: each clip with itself too (frame_self_pairs)
            La, Lb = int(lengths[a]), int(lengths[b])
            per_frame = []
            for x in range(La):
                cos = [float(teacher[a, x] @ teacher[b, y] / (teacher[a, x].norm() * teacher[b, y].norm()))
                       for y in range(Lb)]
                r = qlap_list([frame_maps[a, b, x, y] for y in range(Lb)], pseudo_labels(cos, cfg.r_t, cfg.r_b),
                              cfg.delta_f, cfg.rho_f)
                if r is not None:
                    per_frame.append(r)
            if per_frame:
                frame.append(mean(per_frame))
    x = raw * raw_mask
    # sum |min(x + 1, 0)| + sum |max(x - 1, 0)|
    regularizer = sum(torch.clamp(v + 1, max=0).abs() + torch.clamp(v - 1, min=0).abs() for v in x.flatten())
    v_ap = mean(video_ap) if related is None else (mean(video_ap) + mean(coarse_ap)) / 2
    parts = dict(frame_ap=mean(frame), video_ap=v_ap, infonce=mean(nce), sshn=mean(sshn),
                 regularizer=regularizer)
    weights = dict(frame_ap=cfg.lambda_f, video_ap=cfg.lambda_v, infonce=1.0, sshn=cfg.lambda_s,
                   regularizer=cfg.lambda_reg, pooled_ap=cfg.lambda_u)
    if cfg.lambda_u:  # every pair of two different clips in one list; related pairs: the mean over the two levels
        pairs = [(k, i) for k in range(N) for i in range(N) if k != i]
        scores = [s[k, i] for k, i in pairs]
        fine = qlap_list(scores, [1 if positives[k, i] else 0 for k, i in pairs], cfg.delta_v, cfg.rho_v)
        coarse = qlap_list(scores, [1 if positives[k, i] or rel(k, i) else 0 for k, i in pairs], cfg.delta_v, cfg.rho_v)
        zero = torch.zeros((), dtype=torch.float64)  # a list without a positive pair (or a negative) adds 0
        fine, coarse = (zero if r is None else r for r in (fine, coarse))
        parts["pooled_ap"] = fine if related is None else (fine + coarse) / 2
    return sum(weights[k] * v for k, v in parts.items()), parts


def padded_batch(N=8, T=7, Dt=6, seed=0):
    """A training batch as the trainer builds it: two clips per video, padded to the longest clip
    (student maps 0 on padding, teacher vectors L2-normalised, 0 on padding)."""
    g = torch.Generator().manual_seed(seed)
    # clip lengths whose pseudo-label counts max(round(0.35 L), 1) differ from floor's (L = 5) and
    # from ceil's (L = 4, 7), one of a single frame (a list with no negative) and full/short ones
    lengths = torch.tensor([T, 5, 6, 2, 4, 1, 3, 5][:N] + [T] * max(N - 8, 0))
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


def brute_from(cfg, x, related=None):
    """The brute-force objective of ``ObjectiveInputs`` x, with float64 leaves for the gradients."""
    leaves = {name: getattr(x, name).detach().double().requires_grad_(True) for name in ("video", "frame_maps", "raw")}
    total, parts = brute_objective(cfg, leaves["video"], leaves["frame_maps"], leaves["raw"], x.raw_mask, x.lengths,
                                   x.positives.bool(), x.teacher.double(), related)
    return total, parts, leaves


def test_padded_batch_objective_equals_brute_force_and_unpadded_pairs():
    cfg = TrainConfig()
    x = padded_batch()
    assert bool((x.lengths < x.frame_maps.shape[-1]).any())  # the padded case
    new_in = _with_grad(x)
    total, parts = FloatLoss(cfg)(new_in)
    want_total, want_parts, leaves = brute_from(cfg, x)
    assert set(parts) == set(want_parts) | {"loss"}
    for name, value in want_parts.items():
        assert parts[name] == pytest.approx(float(value.detach()), rel=1e-5, abs=1e-6), name
    assert float(total.detach()) == pytest.approx(float(want_total.detach()), rel=1e-5)
    assert want_parts["frame_ap"] > 0 and want_parts["regularizer"] > 0  # every term is exercised
    total.backward()
    want_total.backward()
    for name in ("video", "frame_maps", "raw"):
        want = leaves[name].grad
        assert want.abs().sum() > 0, name
        torch.testing.assert_close(getattr(new_in, name).grad.double(), want, rtol=1e-4,
                                   atol=1e-5 * float(want.abs().max()), msg=name)
    # The frame term equals the loss on each positive pair (and each clip with itself, as the release)
    # cut to its true lengths, one at a time.
    N = x.lengths.shape[0]
    loss = FrameQuadLinearAPLoss(cfg.delta_f, cfg.rho_f, cfg.r_t, cfg.r_b, self_pairs=False)  # pair (0, 1) only
    values = []
    for a in range(N):
        for b in range(N):
            if a == b or x.positives[a, b]:  # the release's pairs: each clip with itself too
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
    total, parts = FloatLoss(cfg)(full)
    ref_total, _ = HAPVRObjective(lambda_f=cfg.lambda_f, lambda_u=cfg.lambda_u)(full.video / 2 + 0.5, full.positives.long(), raw=full.raw * full.raw_mask,
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
    total, parts = FloatLoss(TrainConfig())(x)
    _, want, _ = brute_from(TrainConfig(), x)  # the repeated teacher frames give the pseudo-labels
    assert parts["frame_ap"] > 0
    for name, value in want.items():
        assert parts[name] == pytest.approx(float(value.detach()), rel=1e-5, abs=1e-6), name


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
    objective = FloatLoss(cfg)
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
    objective = FloatLoss(cfg)

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



@pytest.mark.parametrize("lambda_u", [0.0, 2.5])
def test_related_pairs_rank_between_copies_and_other_videos_like_the_brute_force(lambda_u):
    """Sibling clips (another camera on a video's scene): the video level averages the loss with
    them as negatives and as positives; InfoNCE and SSHN ignore them; the frame level never uses
    them. With ``lambda_u`` the pooled term ranks all pairs of the batch as one list, at both levels. Values and
    float64 gradients against the brute force, through the trainer's loss."""
    cfg = TrainConfig(lambda_u=lambda_u)
    N = 10
    x = padded_batch(N=N, seed=7)
    ids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 5])  # clips 8 and 9: siblings of videos 0 and 2
    positives = ids[:, None] == ids[None, :]
    related = torch.zeros(N, N, dtype=torch.bool)
    for sib, video in ((8, 0), (9, 2)):
        related[sib, ids == video] = related[ids == video, sib] = True
    x = ObjectiveInputs(x.video.double(), x.frame_maps.double(), x.raw.double(), x.raw_mask, x.lengths, positives,
                        x.teacher.double(), related=related)
    leaves = {name: getattr(x, name).detach().clone().requires_grad_(True) for name in ("video", "frame_maps", "raw")}
    got = ObjectiveInputs(leaves["video"], leaves["frame_maps"], leaves["raw"], x.raw_mask, x.lengths, positives,
                          x.teacher, related=related)
    total, parts = FloatLoss(cfg)(got)
    want_total, want_parts, want_leaves = brute_from(cfg, x, related)
    for name, v in want_parts.items():
        torch.testing.assert_close(torch.tensor(parts[name], dtype=torch.float64), v.detach(), rtol=1e-6, atol=1e-8)
    total.backward()
    want_total.backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, want_leaves[name].grad, rtol=1e-6, atol=1e-9)
    # the related pairs change the video level, InfoNCE and SSHN, not the frame level
    assert ("pooled_ap" in parts) == bool(lambda_u)
    _, plain = FloatLoss(cfg)(ObjectiveInputs(x.video, x.frame_maps, x.raw, x.raw_mask, x.lengths, positives,
                                                    x.teacher))
    assert plain["frame_ap"] == parts["frame_ap"]
    assert plain["video_ap"] != parts["video_ap"] and plain["infonce"] != parts["infonce"]
    obj = HAPVRObjective()
    kw = dict(raw=x.raw, frame_sims=x.frame_maps, teacher=x.teacher, lengths=x.lengths)
    with pytest.raises(ValueError, match="related must be a bool tensor of the labels' shape"):
        obj(x.video / 2 + 0.5, positives.long(), related=related[:, :-1], **kw)
    with pytest.raises(ValueError, match="related must be a bool tensor"):
        obj(x.video / 2 + 0.5, positives.long(), related=related.long(), **kw)
    with pytest.raises(ValueError, match="related pairs need video_loss='quadlinear_ap'"):
        HAPVRObjective(video_loss="adaptive_margin")(x.video / 2 + 0.5, positives.long(), related=related, **kw)


# --- optimisation: the trainer's model, objective, optimiser and schedule on one fixed batch ---


def test_short_training_run_lowers_the_objective_on_a_fixed_batch():
    """30 AdamW steps (the trainer's optimiser, schedule and objective, lr 1e-3) on one batch of 4
    videos x 2 clips, the second clip a noisy copy of the first: the objective must fall to half
    or less, every term that can move must move the right way, and the two clips of each video
    must end up ranked above every other clip."""
    import torch.nn.functional as F

    from hapvr.models import VideoSimilarityModel
    from hapvr.training.schedule import lr_lambda
    from hapvr.training.batches import Batch

    g = torch.Generator().manual_seed(0)
    B, T, D, Dt = 4, 8, 32, 16
    src = F.normalize(torch.randn(B, T, 9, D, generator=g), dim=-1)
    tsrc = F.normalize(torch.randn(B, T, Dt, generator=g), dim=-1)
    feats, teach = [], []
    for v in range(B):
        feats += [src[v], F.normalize(src[v] + 0.6 * torch.randn(T, 9, D, generator=g), dim=-1)]
        teach += [tsrc[v], F.normalize(tsrc[v] + 0.3 * torch.randn(T, Dt, generator=g), dim=-1)]
    ids = torch.arange(2 * B) // 2
    batch = Batch(torch.stack(feats), torch.stack(teach), torch.full((2 * B,), T), ids[:, None] == ids[None, :], ids,
                  torch.full((2 * B,), -1))
    cfg = TrainConfig(lr=1e-3, warmup=3, iterations=1000, restarts=1)  # the first 30 steps of a 1000-step schedule
    torch.manual_seed(0)
    model = VideoSimilarityModel(D, cfg.k_s, cfg.k_t)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    objective = FloatLoss(cfg)
    history = []
    for _ in range(30):
        out = model(batch.features, query_lengths=batch.lengths)
        loss, parts = objective(objective_inputs(out, batch, model.min_frames, torch.device("cpu")))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        history.append(parts)
    with torch.no_grad():
        out = model(batch.features, query_lengths=batch.lengths)
        _, final = objective(objective_inputs(out, batch, model.min_frames, torch.device("cpu")))
    first = history[0]
    assert final["loss"] <= 0.5 * first["loss"], (first, final)
    assert final["video_ap"] <= 0.25 * first["video_ap"]
    assert final["infonce"] < first["infonce"] and final["sshn"] < first["sshn"]
    assert final["frame_ap"] <= 0.95 * first["frame_ap"]  # the teacher's frame ranking is learnt more slowly
    # every clip's partner now scores above every clip of another video
    sim = out.video.clone().fill_diagonal_(float("nan"))
    partner = sim[torch.arange(2 * B), torch.arange(2 * B) ^ 1]
    others = torch.where(batch.positives, float("-inf"), sim).amax(1)
    assert bool((partner > others).all()), (partner, others)
