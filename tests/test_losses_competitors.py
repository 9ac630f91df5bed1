"""The competitor losses of the paper's Table 2 and the adaptive-margin loss: hand-computed values
on a tiny list, and pytorch-metric-learning (test-only dependency) where it implements the same
formula."""

import itertools
import math

import pytest
import torch

from hapvr.losses import (
    AdaptiveMarginLoss,
    BlackBoxAPLoss,
    CircleLoss,
    ContrastiveLoss,
    DIRAPLoss,
    FastAPLoss,
    MAELoss,
    MSELoss,
    SmoothAPLoss,
    TripletLoss,
    build_loss,
)

# One query: positives 0.9 and 0.6, negatives 0.7 and 0.2 (ranking P N P N, AP = (1 + 2/3) / 2).
SIM = torch.tensor([[0.9, 0.6, 0.7, 0.2]], dtype=torch.float64)
LAB = torch.tensor([[1, 1, 0, 0]])


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_mae_mse():
    assert MAELoss()(SIM, LAB).item() == pytest.approx((0.1 + 0.4 + 0.7 + 0.2) / 4)
    assert MSELoss()(SIM, LAB).item() == pytest.approx((0.01 + 0.16 + 0.49 + 0.04) / 4)
    # Ignored entries do not count; a custom negative target (scores in [-1, 1]).
    lab = torch.tensor([[1, -1, 0, 0]])
    assert MAELoss(negative_target=-1.0)(SIM, lab).item() == pytest.approx((0.1 + 1.7 + 1.2) / 3)


def test_contrastive():
    # pos: [1 - 0.9, 1 - 0.6] -> mean 0.25; neg: [0.7 - 0.5, 0] -> mean 0.1.
    assert ContrastiveLoss()(SIM, LAB).item() == pytest.approx(0.35)
    assert ContrastiveLoss(squared=True)(SIM, LAB).item() == pytest.approx((0.01 + 0.16) / 2 + 0.04 / 2)


def test_triplet():
    # (p, n) = (0.6, 0.7) is the only violated triplet: 0.7 - 0.6 + 0.1 = 0.2, over 4 triplets.
    assert TripletLoss(margin=0.1)(SIM, LAB).item() == pytest.approx(0.05)


def test_circle():
    m, gamma = 0.4, 80.0
    # Positive weights [1 + m - s]_+: 0.5, 0.8; negative weights [s + m]_+: 1.1, 0.6.
    logit_p = [-gamma * 0.5 * (0.9 - 0.6), -gamma * 0.8 * (0.6 - 0.6)]
    logit_n = [gamma * 1.1 * (0.7 - 0.4), gamma * 0.6 * (0.2 - 0.4)]
    lse = lambda xs: max(xs) + math.log(sum(math.exp(x - max(xs)) for x in xs))  # noqa: E731
    z = lse(logit_n) + lse(logit_p)
    expected = z + math.log1p(math.exp(-z))  # softplus for large z
    assert CircleLoss()(SIM, LAB).item() == pytest.approx(expected)


def test_fastap_and_dir_histograms():
    # Bin centres 1, 0.5, 0 (width 0.5). Triangular mass of 0.9: (0.8, 0.2, 0), 0.6: (0.2, 0.8, 0),
    # 0.7: (0.4, 0.6, 0), 0.2: (0, 0.4, 0.6). h+ = (1, 1, 0), h = (1.4, 2, 0.6),
    # H+ = (1, 2, 2), H = (1.4, 3.4, 4). AP = (1 * 1 / 1.4 + 1 * 2 / 3.4) / 2.
    expected = 1 - (1 / 1.4 + 2 / 3.4) / 2
    assert FastAPLoss(num_bins=2)(SIM, LAB).item() == pytest.approx(expected)
    assert DIRAPLoss(num_bins=3)(SIM, LAB).item() == pytest.approx(expected)


def test_smooth_ap():
    tau = 0.01
    G = lambda d: sigmoid(d / tau)  # noqa: E731
    ap_09 = (1 + G(0.6 - 0.9)) / (1 + G(0.6 - 0.9) + G(0.7 - 0.9) + G(0.2 - 0.9))
    ap_06 = (1 + G(0.9 - 0.6)) / (1 + G(0.9 - 0.6) + G(0.7 - 0.6) + G(0.2 - 0.6))
    assert SmoothAPLoss()(SIM, LAB).item() == pytest.approx(1 - (ap_09 + ap_06) / 2, rel=1e-12)
    assert SmoothAPLoss(tau=1e-4)(SIM, LAB).item() == pytest.approx(1 - (1 + 2 / 3) / 2, abs=1e-9)


def test_blackbox_ap_value_and_gradient():
    x = SIM.clone().requires_grad_(True)
    loss = BlackBoxAPLoss(lambda_val=1.0, margin=0.0)(x, LAB)
    assert loss.item() == pytest.approx(1 - (1 + 2 / 3) / 2)  # the exact AP, not a surrogate
    loss.backward()
    # dL/drank_all = (1/2) rk_P / rk^2 = (0.5, 1/9, 0, 0): scores + that re-rank 0.6 above 0.7,
    # so rank_all moves by (0, -1, +1, 0). dL/drank_P = -(1/2) / rk = (-0.5, -1/6): the
    # positives swap, rank_P moves by (+1, -1). Gradient = sum of the moves / lambda.
    assert x.grad.tolist() == [[1.0, -2.0, 1.0, 0.0]]


def test_adaptive_margin():
    teacher = torch.tensor([[0.8, 0.5, 0.6, 0.1]], dtype=torch.float64)
    loss = AdaptiveMarginLoss(base_margin=0.0, scale=1.0, max_margin=0.2)
    # Margins clamp(t_p - t_n, 0, 0.2): (0.9 vs 0.7) 0.2, (0.9 vs 0.2) 0.2, (0.6 vs 0.7) 0 (the
    # teacher finds this negative closer than the positive), (0.6 vs 0.2) 0.2.
    assert loss.margins(teacher)[0, 1, 2].item() == 0.0
    # Only (0.6, 0.7) violates: 0.7 - 0.6 + 0 = 0.1, over 4 triplets.
    assert loss(SIM, LAB, teacher).item() == pytest.approx(0.025)
    # A fixed margin of 0.2 would also punish it by 0.2 more.
    assert TripletLoss(margin=0.2)(SIM, LAB).item() == pytest.approx(0.075)
    with pytest.raises(ValueError, match="teacher_sim must have the shape"):
        loss(SIM, LAB, teacher[:, :2])


def blackbox_gradient(sim, labels, lambda_val, margin):
    """The blackbox rule written out for ``1 - AP`` with AP from ranks, on plain Python lists: per
    ranking (among all labelled entries, among positives), dL/d rank analytically, then
    ``(rank(x + lambda dL/drank) - rank(x)) / lambda`` with descending ranks, ties to the lower
    index. The diagonal is ignored (self_label -1)."""

    def ranks(values):
        order = sorted(range(len(values)), key=lambda j: (-values[j], j))
        out = [0] * len(values)
        for position, j in enumerate(order, start=1):
            out[j] = position
        return out

    Q, M = sim.shape
    grad = torch.zeros(Q, M, dtype=torch.float64)
    rows = [q for q in range(Q) if any(labels[q, j] == 1 for j in range(M) if j != q)]
    for q in rows:
        pos = [j != q and labels[q, j] == 1 for j in range(M)]
        used = [j != q and labels[q, j] >= 0 for j in range(M)]
        x = [float(sim[q, j]) - margin * pos[j] for j in range(M)]
        x_all = [x[j] if used[j] else float("-inf") for j in range(M)]
        x_pos = [x[j] if pos[j] else float("-inf") for j in range(M)]
        r_all, r_pos = ranks(x_all), ranks(x_pos)
        n_pos = sum(pos)
        # L = mean over rows of 1 - 1/|P| sum_{i in P} r_pos[i] / r_all[i]
        d_all = [r_pos[j] / r_all[j] ** 2 / n_pos / len(rows) if pos[j] else 0.0 for j in range(M)]
        d_pos = [-1.0 / r_all[j] / n_pos / len(rows) if pos[j] else 0.0 for j in range(M)]
        for values, d, r in ((x_all, d_all, r_all), (x_pos, d_pos, r_pos)):
            moved = ranks([v + lambda_val * dv for v, dv in zip(values, d)])
            for j in range(M):
                grad[q, j] += (moved[j] - r[j]) / lambda_val
    return grad


@pytest.mark.parametrize("name", ["mae", "mse", "contrastive", "triplet", "circle", "fastap", "dir",
                                  "blackbox_ap", "smooth_ap"])
def test_batch_matrix_gradients_equal_reference_gradients_and_diagonal_ignored(name):
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    video = torch.arange(6) // 2
    labels = (video[:, None] == video[None, :]).long()
    loss = build_loss(name)
    value = loss(sim, labels)
    value.backward()
    assert torch.isfinite(value) and sim.grad.abs().sum() > 0
    if name == "blackbox_ap":  # ranks are piecewise constant: the gradient is the blackbox rule's
        # (the re-ranking may move the ignored diagonal's rank: no zero-diagonal check)
        want = blackbox_gradient(sim.detach(), labels, loss.lambda_val, loss.margin)
        torch.testing.assert_close(sim.grad, want, rtol=0, atol=1e-12)
        return
    # differentiable almost everywhere: central differences, entry by entry. Circle loss holds its
    # self-paced weights constant (as the original does), so its reference is the derivative with
    # the weights frozen at the unperturbed scores, from the formula written out.
    base = sim.detach().clone()
    if name == "circle":
        f = lambda s: circle_frozen(s, base, labels, loss.m, loss.gamma)  # noqa: E731
    else:
        f = lambda s: loss(s, labels)  # noqa: E731
    assert float(f(base)) == pytest.approx(float(value.detach()), rel=1e-12)
    torch.testing.assert_close(sim.grad, central_differences(f, base), rtol=1e-5, atol=1e-7)
    assert torch.all(torch.diagonal(sim.grad) == 0)


def central_differences(f, x, eps=1e-6):
    grad = torch.zeros_like(x)
    for idx in itertools.product(*map(range, x.shape)):
        plus, minus = x.clone(), x.clone()
        plus[idx] += eps
        minus[idx] -= eps
        with torch.no_grad():
            grad[idx] = (f(plus) - f(minus)) / (2 * eps)
    return grad


def circle_frozen(sim, weights_at, labels, m, gamma):
    """Circle loss per query, softplus(log sum_n exp(gamma a_n (s_n - m)) + log sum_p exp(-gamma a_p
    (s_p - 1 + m))), a_p = [1 + m - s_p]_+ and a_n = [s_n + m]_+ taken at ``weights_at``; mean over
    queries with a positive and a negative (the diagonal ignored)."""
    values = []
    for q in range(sim.shape[0]):
        P = [j for j in range(sim.shape[1]) if j != q and labels[q, j] == 1]
        N = [j for j in range(sim.shape[1]) if j != q and labels[q, j] == 0]
        if not P or not N:
            continue
        lse_n = math.log(sum(math.exp(gamma * max(float(weights_at[q, j]) + m, 0) * (float(sim[q, j]) - m)) for j in N))
        lse_p = math.log(sum(math.exp(-gamma * max(1 + m - float(weights_at[q, j]), 0) * (float(sim[q, j]) - 1 + m))
                             for j in P))
        values.append(math.log1p(math.exp(lse_n + lse_p)))
    return torch.tensor(sum(values) / len(values), dtype=torch.float64)


# --- pytorch-metric-learning: same formulas, computed from embeddings -------------------------

# A test extra (pip install 'hapvr[test]'): missing, these tests fail rather than skip.
from pytorch_metric_learning import distances, losses, reducers  # noqa: E402


def embedding_batch(n_classes=4, per_class=4, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    emb = torch.nn.functional.normalize(torch.randn(n_classes * per_class, dim, generator=g,
                                                    dtype=torch.float64), dim=1)
    cls = torch.arange(n_classes * per_class) // per_class
    return emb, cls, emb @ emb.T, (cls[:, None] == cls[None, :]).long()


@pytest.mark.parametrize("seed", [0, 1])
def test_against_pytorch_metric_learning(seed):
    emb, cls, sim, labels = embedding_batch(seed=seed)
    cos, mean = distances.CosineSimilarity(), reducers.MeanReducer()
    cases = [
        (ContrastiveLoss(pos_margin=0.8, neg_margin=0.3),
         losses.ContrastiveLoss(pos_margin=0.8, neg_margin=0.3, distance=cos, reducer=mean)),
        (TripletLoss(margin=0.2), losses.TripletMarginLoss(margin=0.2, distance=cos, reducer=mean)),
        (CircleLoss(m=0.4, gamma=80), losses.CircleLoss(m=0.4, gamma=80, reducer=mean)),
        # PML's FastAP bins squared distances 2 - 2 cos over [0, 4]: cos over [-1, 1] here.
        (FastAPLoss(num_bins=10, sim_range=(-1.0, 1.0)), losses.FastAPLoss(num_bins=10, reducer=mean)),
    ]
    for ours, theirs in cases:
        torch.testing.assert_close(ours(sim, labels), theirs(emb, cls), rtol=1e-10, atol=1e-12,
                                   msg=lambda m: f"{type(ours).__name__}: {m}")


def test_smooth_ap_against_pytorch_metric_learning():
    # PML's Smooth-AP (after the original) ranks the anchor in its own list as a positive
    # (self_label=1) and needs as many classes as clips per class; it works in float32.
    emb, cls, sim, labels = embedding_batch(n_classes=4, per_class=4, seed=3)
    theirs = losses.SmoothAPLoss(temperature=0.01, reducer=reducers.MeanReducer())(emb, cls)
    ours = SmoothAPLoss(tau=0.01, self_label=1)(sim, labels)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-5, atol=1e-6)
