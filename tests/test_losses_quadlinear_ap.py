"""The QuadLinear-AP losses: video level (eq. 12), frame level (section 3.4, eqs. 13-14) and the
full objective (eq. 15)."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from hapvr.losses import (
    FrameQuadLinearAPLoss,
    HAPVRObjective,
    HAPVRObjectiveConfig,
    InfoNCELoss,
    QuadLinearAPLoss,
    SimilarityRegularizer,
    SSHNLoss,
    build_loss,
    frame_pseudo_labels,
    teacher_frame_similarities,
)
from hapvr.ops import quadlinear_ap_reference


def _load_materialised():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "frame_loss_materialised.py"
    spec = importlib.util.spec_from_file_location("frame_loss_materialised", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.frame_quadlinear_ap_materialised


def batch_labels(N, views=2):
    """Self-supervised labels: clips 2v and 2v+1 are two views of video v."""
    video = torch.arange(N) // views
    return (video[:, None] == video[None, :]).to(torch.int64)


# --- video level ------------------------------------------------------------------------


def test_video_loss_is_mean_reference_risk_and_self_label():
    g = torch.Generator().manual_seed(0 + torch.initial_seed())
    sim = torch.rand(6, 6, generator=g, dtype=torch.float64)
    labels = batch_labels(6)
    with_self = labels.clone().to(torch.int8)
    without_self = with_self.clone()
    without_self.fill_diagonal_(-1)
    loss = QuadLinearAPLoss()  # paper: delta 0.05, rho 0.10, query counted as positive
    assert (loss.delta, loss.rho, loss.self_label) == (0.05, 0.10, 1)
    expected = quadlinear_ap_reference(sim, with_self, 0.05, 0.10).risk.mean()
    torch.testing.assert_close(loss(sim, labels), expected)
    expected = quadlinear_ap_reference(sim, without_self, 0.05, 0.10).risk.mean()
    torch.testing.assert_close(QuadLinearAPLoss(self_label=-1)(sim, labels), expected)


def test_video_loss_skips_invalid_queries():
    sim = torch.rand(3, 4, dtype=torch.float64)
    labels = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, -1]])
    r = quadlinear_ap_reference(sim, labels.to(torch.int8), 0.05, 0.1).risk
    torch.testing.assert_close(QuadLinearAPLoss(self_label=None)(sim, labels), r[0])


# --- frame level ------------------------------------------------------------------------


def test_pseudo_labels_eq14():
    # T' = 10, r_t = r_b = 0.35: K = round(3.5) = 4 frames on each side, 2 ignored.
    row = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6])
    lab = frame_pseudo_labels(row[None], 0.35, 0.35)[0]
    assert lab.tolist() == [-1, 0, 1, 0, 1, 0, 1, 0, 1, -1]
    # Ties at the threshold join its side; a constant row is all positive (no negatives).
    tied = frame_pseudo_labels(torch.tensor([[0.9, 0.9, 0.9, 0.1, 0.5]]), 0.2, 0.2)[0]
    assert tied.tolist() == [1, 1, 1, 0, -1]
    assert frame_pseudo_labels(torch.ones(1, 6), 0.35, 0.35).tolist() == [[1] * 6]
    with pytest.raises(ValueError, match="r_t"):
        frame_pseudo_labels(row[None], 1.2, 0.35)
    with pytest.raises(ValueError, match="r_t \\+ r_b"):
        frame_pseudo_labels(row[None], 0.6, 0.6)


def frame_loss_loop(frame_sims, teacher, pair_labels, delta, rho, r_t, r_b, self_pairs=True):
    """Section 3.4 pair by pair, frame by frame, on the reference operator; with ``self_pairs``
    each clip paired with itself counts too (the release's mask, diagonal included)."""
    N, _, T, T2 = frame_sims.shape
    pair_values = []
    for a in range(N):
        for b in range(N):
            if pair_labels[a, b] != 1 or (a == b and not self_pairs):
                continue
            lab = frame_pseudo_labels(teacher[a, b], r_t, r_b)
            risk, valid = quadlinear_ap_reference(frame_sims[a, b], lab, delta, rho)
            if valid.any():
                pair_values.append(risk[valid].mean())
    return torch.stack(pair_values).mean()


def frame_case(N=6, T=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    frame_sims = torch.rand(N, N, T, T, generator=g, dtype=dtype)
    emb = torch.randn(N, T, 5, generator=g, dtype=dtype)
    teacher = teacher_frame_similarities(emb[:, None], emb[None, :])  # [N, N, T, T]
    return frame_sims, emb, teacher, batch_labels(N)


def test_frame_loss_matches_loop_and_materialised():
    frame_sims, emb, teacher, labels = frame_case()
    loss = FrameQuadLinearAPLoss()
    assert (loss.delta, loss.rho, loss.r_t, loss.r_b) == (0.05, 5.0, 0.35, 0.35)
    assert loss.self_pairs  # the release's default: a clip paired with itself counts
    value = loss(frame_sims, teacher, labels)
    torch.testing.assert_close(value, frame_loss_loop(frame_sims, teacher, labels, 0.05, 5.0, 0.35, 0.35))
    # Teacher embeddings [N, T, D'] give the same value (eq. 13 computed for positive pairs only).
    torch.testing.assert_close(loss(frame_sims, emb, labels), value)
    # Distinct pairs only: the loop without the diagonal, and the predecessor's materialised form.
    distinct = FrameQuadLinearAPLoss(self_pairs=False)(frame_sims, teacher, labels)
    torch.testing.assert_close(distinct, frame_loss_loop(frame_sims, teacher, labels, 0.05, 5.0, 0.35, 0.35, False))
    torch.testing.assert_close(distinct, _load_materialised()(frame_sims, teacher, labels))
    assert abs(float(distinct) - float(value)) > 1e-4


def test_frame_loss_gradient_matches_materialised_and_touches_positive_pairs_only():
    frame_sims, _, teacher, labels = frame_case(N=4, T=6, seed=1)
    x = frame_sims.clone().requires_grad_(True)
    FrameQuadLinearAPLoss(delta=0.2, self_pairs=False)(x, teacher, labels).backward()
    y = frame_sims.clone().requires_grad_(True)
    _load_materialised()(y, teacher, labels, delta=0.2).backward()
    torch.testing.assert_close(x.grad, y.grad)
    positive_pair = (labels == 1) & ~torch.eye(4, dtype=torch.bool)
    assert torch.all(x.grad[~positive_pair] == 0)
    assert x.grad[positive_pair].abs().sum() > 0
    # The default (self pairs too) also reaches each clip's map with itself, and nothing else.
    z = frame_sims.clone().requires_grad_(True)
    FrameQuadLinearAPLoss(delta=0.2)(z, teacher, labels).backward()
    eye = torch.eye(4, dtype=torch.bool)
    assert torch.all(z.grad[~(positive_pair | eye)] == 0) and z.grad[eye].abs().sum() > 0


def test_frame_loss_without_positive_pairs_is_zero_with_graph():
    frame_sims, _, teacher, _ = frame_case(N=3, T=4)
    x = frame_sims.clone().requires_grad_(True)
    value = FrameQuadLinearAPLoss(self_pairs=False)(x, teacher, torch.eye(3, dtype=torch.int64))
    assert value.item() == 0.0
    value.backward()
    assert torch.all(x.grad == 0)
    # With self pairs (the default) each clip with itself is still a pair; a diagonal labelled -1 is not.
    eye = torch.eye(3, dtype=torch.int64)
    torch.testing.assert_close(FrameQuadLinearAPLoss()(frame_sims, teacher, eye),
                               frame_loss_loop(frame_sims, teacher, eye, 0.05, 5.0, 0.35, 0.35))
    ignored = eye.clone()
    ignored[1, 1] = -1
    torch.testing.assert_close(FrameQuadLinearAPLoss()(frame_sims, teacher, ignored),
                               frame_loss_loop(frame_sims, teacher, ignored, 0.05, 5.0, 0.35, 0.35))
    assert abs(float(FrameQuadLinearAPLoss()(frame_sims, teacher, ignored))
               - float(FrameQuadLinearAPLoss()(frame_sims, teacher, eye))) > 1e-6


def test_frame_loss_bad_inputs():
    frame_sims, emb, teacher, labels = frame_case(N=3, T=4)
    loss = FrameQuadLinearAPLoss()
    with pytest.raises(ValueError, match="frame_sims must have 4 dimensions"):
        loss(frame_sims[0], teacher, labels)
    with pytest.raises(ValueError, match="teacher similarities must have the shape"):
        loss(frame_sims, teacher[:, :, :2], labels)
    with pytest.raises(ValueError, match="pair_labels must have shape"):
        loss(frame_sims, teacher, labels[:2])
    with pytest.raises(ValueError, match="r_b"):
        FrameQuadLinearAPLoss(r_b=0.0)
    bad = frame_sims.clone()
    bad[0, 1, 0, 0] = float("nan")  # clips 0 and 1 are a positive pair: their rows are read
    with pytest.raises(ValueError, match="frame_sims contains NaN"):
        loss(bad, teacher, labels)


# --- frame level on padded batches (lengths) ---------------------------------------------


def test_pseudo_labels_use_each_rows_true_length():
    # True length 10 inside a row padded to 14: K = round(0.35 * 10) = 4 (not round(4.9) = 5), and
    # whatever the padding holds is labelled -1.
    row = torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.0, 0.4, 0.8, 0.6])
    padded = torch.cat([row, torch.tensor([5.0, -5.0, 0.45, 0.0])])
    lab = frame_pseudo_labels(padded[None], 0.35, 0.35, lengths=torch.tensor([10]))[0]
    assert lab.tolist() == [-1, 0, 1, 0, 1, 0, 1, 0, 1, -1] + [-1] * 4
    assert (frame_pseudo_labels(padded[None], 0.35, 0.35)[0] == 1).sum() == 5
    # Broadcast over rows, one length per row; a 1-frame row is its own positive, nothing negative.
    both = frame_pseudo_labels(torch.stack([padded, padded]), 0.35, 0.35, lengths=torch.tensor([10, 1]))
    assert both[0].tolist() == lab.tolist()
    assert both[1].tolist() == [1] + [-1] * 13
    # Ties keep joining the threshold's side inside the valid part only.
    tied = frame_pseudo_labels(torch.tensor([[0.9, 0.9, 0.9, 0.1, 0.5, 0.9]]), 0.2, 0.2, lengths=torch.tensor([5]))
    assert tied.tolist() == [[1, 1, 1, 0, -1, -1]]
    with pytest.raises(ValueError, match="lengths must lie in \\[1, 14\\]"):
        frame_pseudo_labels(padded[None], 0.35, 0.35, lengths=torch.tensor([15]))


def padded_frame_case(N=6, T=8, seed=3):
    """A padded batch: random lengths (a full clip, a 1-frame clip, a 3-frame clip among them),
    garbage in the padding of the student maps and of the teacher embeddings."""
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    lengths = torch.randint(2, T + 1, (N,), generator=g)
    lengths[0], lengths[1], lengths[3] = T, 1, 3
    frame_sims = torch.rand(N, N, T, T, generator=g, dtype=torch.float64)
    emb = torch.randn(N, T, 5, generator=g, dtype=torch.float64)
    for k in range(N):
        frame_sims[:, k, :, lengths[k]:] = 7.0  # padding never ranks, whatever its value
        frame_sims[k, :, lengths[k]:, :] = -3.0
    return frame_sims, emb, batch_labels(N), lengths


def frame_loss_per_unpadded_pair(frame_sims, emb, labels, lengths, loss):
    """The loss on each positive pair alone, cut to its true lengths, then averaged over the pairs
    that have at least one valid frame (differentiable with respect to ``frame_sims``)."""
    N = frame_sims.shape[0]
    single = FrameQuadLinearAPLoss(loss.delta, loss.rho, loss.r_t, loss.r_b, self_pairs=False)  # pair (0, 1) only
    values = []
    for a in range(N):
        for b in range(N):
            if (a == b and not loss.self_pairs) or (a != b and labels[a, b] != 1):
                continue
            La, Lb = int(lengths[a]), int(lengths[b])
            pair = frame_sims[a, b, :La, :Lb]
            zero = torch.zeros_like(pair)
            sims = torch.stack([torch.stack([zero, pair]), torch.stack([zero, zero])])  # only (0, 1) is used
            t = teacher_frame_similarities(emb[a, :La], emb[b, :Lb])
            teacher = torch.stack([torch.stack([t, t]), torch.stack([t, t])])
            pair_labels = torch.tensor([[1, 1], [0, 1]])
            lab = frame_pseudo_labels(t, loss.r_t, loss.r_b)
            if ((lab == 1).any(-1) & (lab == 0).any(-1)).any():
                values.append(single(sims, teacher, pair_labels))
    return torch.stack(values).mean()


@pytest.mark.parametrize("teacher_kind", ["embeddings", "similarities"])
def test_padded_frame_loss_equals_unpadded_pairs_value_and_gradient(teacher_kind):
    frame_sims, emb, labels, lengths = padded_frame_case()
    loss = FrameQuadLinearAPLoss(delta=0.2)
    teacher = emb if teacher_kind == "embeddings" else teacher_frame_similarities(emb[:, None], emb[None, :])
    x = frame_sims.clone().requires_grad_(True)
    value = loss(x, teacher, labels, lengths)
    value.backward()
    y = frame_sims.clone().requires_grad_(True)
    expected = frame_loss_per_unpadded_pair(y, emb, labels, lengths, loss)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(x.grad, y.grad)
    T = frame_sims.shape[-1]
    inside = (torch.arange(T)[None, :] < lengths[:, None])
    inside = inside[:, None, :, None] & inside[None, :, None, :]
    assert torch.all(x.grad[~inside] == 0) and x.grad[inside].abs().sum() > 0
    # Without lengths the padding would be ranked: a different value.
    assert abs(float(loss(frame_sims, teacher, labels)) - float(value.detach())) > 1e-3
    # Full lengths are the same as no lengths.
    full = torch.full_like(lengths, T)
    torch.testing.assert_close(loss(frame_sims, teacher, labels, full), loss(frame_sims, teacher, labels))


def test_frame_loss_bad_lengths():
    frame_sims, emb, labels, lengths = padded_frame_case(N=4, T=5)
    loss = FrameQuadLinearAPLoss()
    for bad, match in [(lengths[:3], "lengths must have shape \\(4,\\)"),
                       (lengths[None], "lengths must have shape \\(4,\\)"),
                       (torch.tensor([5, 0, 2, 3]), "lengths must lie in \\[1, 5\\]"),
                       (torch.tensor([5, 6, 2, 3]), "lengths must lie in \\[1, 5\\]")]:
        with pytest.raises(ValueError, match=match):
            loss(frame_sims, emb, labels, bad)
    with pytest.raises(TypeError, match="lengths must hold integers"):
        loss(frame_sims, emb, labels, lengths.double())
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        loss(frame_sims, emb, labels, [5, 5, 5, 5])
    # The frame counts of both axes bound the lengths.
    with pytest.raises(ValueError, match="lengths must lie in \\[1, 4\\]"):
        loss(frame_sims[:, :, :, :4], teacher_frame_similarities(emb[:, None], emb[None, :, :4]), labels,
             torch.tensor([5, 1, 2, 3]))


# --- the objective (eq. 15) ----------------------------------------------------------------


def test_objective_is_weighted_sum_of_parts():
    frame_sims, _, teacher, labels = frame_case(N=6, T=5, seed=2)
    sim = torch.rand(6, 6, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(6, 6, 2, 2, dtype=torch.float64) * 2
    objective = HAPVRObjective()
    c = objective.config
    assert (c.lambda_f, c.lambda_v, c.lambda_nce, c.lambda_s, c.lambda_reg) == (6.0, 4.0, 1.0, 3.0, 1.0)
    total, parts = objective(sim, labels, raw=raw, frame_sims=frame_sims, teacher=teacher)
    expected_parts = {
        "frame_ap": FrameQuadLinearAPLoss()(frame_sims, teacher, labels),
        "video_ap": QuadLinearAPLoss()(sim, labels),
        "infonce": InfoNCELoss(tau=0.03)(sim, labels),
        "sshn": SSHNLoss()(sim, labels),
        "regularizer": SimilarityRegularizer()(raw),
    }
    assert set(parts) == set(expected_parts)
    for name, value in expected_parts.items():
        torch.testing.assert_close(parts[name], value.detach())
    weights = dict(frame_ap=6, video_ap=4, infonce=1, sshn=3, regularizer=1)
    torch.testing.assert_close(total, sum(weights[k] * v for k, v in expected_parts.items()))
    total.backward()
    # Reference gradients by central differences (float64). Through sim and raw: gradcheck, entry
    # by entry. Through frame_sims (900 entries): the directional derivative along random directions.
    frame_sims = frame_sims.clone().requires_grad_(True)
    raw = raw.clone().requires_grad_(True)

    def f(s, r, fs):
        return objective(s, labels, raw=r, frame_sims=fs, teacher=teacher)[0]

    sim_leaf = sim.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s, r: f(s, r, frame_sims.detach()), (sim_leaf, raw))
    (g_frames,) = torch.autograd.grad(f(sim.detach(), raw.detach(), frame_sims), frame_sims)
    assert g_frames.abs().sum() > 0
    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    for _ in range(3):
        v = torch.randn(frame_sims.shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            fd = (f(sim, raw, frame_sims + eps * v) - f(sim, raw, frame_sims - eps * v)) / (2 * eps)
        assert float((g_frames * v).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_objective_weights_are_configurable():
    sim = torch.rand(4, 4, dtype=torch.float64)
    labels = batch_labels(4)
    video_only = HAPVRObjective(lambda_f=0, lambda_reg=0, lambda_v=2.0)
    total, parts = video_only(sim, labels)
    assert set(parts) == {"video_ap", "infonce", "sshn"}
    torch.testing.assert_close(total, 2 * parts["video_ap"] + parts["infonce"] + 3 * parts["sshn"])
    config = HAPVRObjectiveConfig(lambda_f=0, lambda_reg=0, rho_v=1.0)
    assert HAPVRObjective(config).video_ap.rho == 1.0
    assert isinstance(build_loss("hapvr", lambda_f=0), HAPVRObjective)
    with pytest.raises(ValueError, match="frame_sims and teacher are required"):
        HAPVRObjective()(sim, labels, raw=sim)
    with pytest.raises(ValueError, match="raw"):
        HAPVRObjective(lambda_f=0)(sim, labels)
    with pytest.raises(TypeError, match="unknown HAPVRObjective option"):
        HAPVRObjective(lambda_x=1)


def test_objective_adaptive_margin_video_term():
    """``video_loss="adaptive_margin"``: the video term is AdaptiveMarginLoss with margins from the
    teacher's video vectors (mean of the valid L2-normalised frame vectors), computed here by
    hand; the other terms are unchanged."""
    from hapvr.losses import AdaptiveMarginLoss

    frame_sims, emb, _, labels = frame_case(N=6, T=5, seed=4)
    lengths = torch.tensor([5, 3, 5, 2, 4, 5])
    sim = torch.rand(6, 6, dtype=torch.float64, requires_grad=True)
    raw = torch.randn(6, 6, 2, 2, dtype=torch.float64)
    am = HAPVRObjective(video_loss="adaptive_margin", am_base_margin=0.05, am_scale=0.5, am_max_margin=0.3)
    total, parts = am(sim, labels, raw=raw, frame_sims=frame_sims, teacher=emb, lengths=lengths)
    vec = torch.stack([torch.nn.functional.normalize(emb[k, :int(lengths[k])], dim=-1).sum(0) for k in range(6)])
    vec = torch.nn.functional.normalize(vec, dim=-1)
    teacher_sim = (vec @ vec.T + 1) / 2
    # by hand: mean over (query, positive != query, negative) of [s_kj - s_ki + m]_+
    hinges = []
    for k in range(6):
        for i in range(6):
            for j in range(6):
                if i != k and labels[k, i] == 1 and labels[k, j] == 0:
                    m = min(max(0.05 + 0.5 * float(teacher_sim[k, i] - teacher_sim[k, j]), 0.0), 0.3)
                    hinges.append(torch.relu(sim[k, j] - sim[k, i] + m))
    expected = torch.stack(hinges).mean()
    torch.testing.assert_close(parts["video_ap"], expected.detach())
    torch.testing.assert_close(parts["video_ap"], AdaptiveMarginLoss(0.05, 0.5, 0.3)(sim, labels, teacher_sim).detach())
    qlap = HAPVRObjective()(sim, labels, raw=raw, frame_sims=frame_sims, teacher=emb, lengths=lengths)[1]
    for name in ("frame_ap", "infonce", "sshn", "regularizer"):
        torch.testing.assert_close(parts[name], qlap[name])
    total.backward()
    assert sim.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="video_loss must be one of"):
        HAPVRObjective(video_loss="triplet")
    with pytest.raises(ValueError, match="teacher's frame vectors"):
        HAPVRObjective(video_loss="adaptive_margin", lambda_f=0)(sim, labels, raw=raw)


def test_frame_loss_fits_paper_batch_in_memory():
    """N = 128 clips of T = 28 frames, forward + backward: peak growth under 2 GiB (own process)."""
    code = """
import resource, torch
from hapvr.losses import FrameQuadLinearAPLoss
N, T = 128, 28
video = torch.arange(N) // 2
labels = (video[:, None] == video[None, :]).long()
x = torch.rand(N, N, T, T, requires_grad=True)
teacher = torch.rand(N, N, T, T)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
FrameQuadLinearAPLoss()(x, teacher, labels).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""
    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    assert out.returncode == 0, out.stderr
    peak = int(out.stdout.strip().splitlines()[-1])
    assert peak < 2 * 2**30, f"peak {peak / 2**20:.0f} MiB"
