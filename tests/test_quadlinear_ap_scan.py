"""The two-level prefix scan of quadlinear_ap (common/quadlinear_ap.h), through the CPU kernel.

The CUDA kernel builds its prefix sums with one block per query: each thread sums one chunk of
the sorted row, the chunk totals are scanned across the block, each thread writes its chunk's
prefixes. The CPU kernel runs the same helpers with the same chunk boundaries one chunk after
another, so these tests exercise the code the GPU runs (no GPU exists here): rows whose
negatives (moment prefix) or positives (weight prefix, backward only) number just below, at and
above the chunk edges (16 entries per chunk, at most 256 chunks, so more than 4096 entries make
chunks longer than 16), checked against a direct O(|P| |N|) float64 oracle.
"""

import pytest
import torch

from hapvr.ops import quadlinear_ap

DELTA, RHO = 0.05, 0.10

# Member counts around the scan's edges: 1 chunk, 16-entry chunks, the 32-chunk one-warp block
# (512 entries), the 256-chunk block (4096), and longer chunks beyond it.
EDGE_COUNTS = [1, 15, 16, 17, 33, 511, 512, 513, 4095, 4096, 4097, 6001]


def oracle_row(s, lab, delta, rho):
    """Risk of one row and d risk / d s, from [|P|, |N|] pair matrices (den held constant)."""
    s = s.detach().clone().requires_grad_(True)
    pos, neg = lab == 1, lab == 0
    sp, sn = s[pos], s[neg]
    d = sn[None, :] - sp[:, None]  # d[i, j] = s_j - s_i
    r = torch.where(d >= 0, 2 * d / delta + 1,
                    torch.where(d >= -delta, (d / delta + 1) ** 2, torch.zeros_like(d)))
    num = r.sum(1)
    spd = sp.detach()
    den = 1 + rho * (spd[None, :] > spd[:, None]).sum(1).to(s.dtype)
    risk = (num / (den + num)).mean()
    (grad,) = torch.autograd.grad(risk, s)
    return risk.detach(), grad


def make_rows(member_counts, other_count, member_label, M, seed, offset=0.0, spread=1.0):
    """One row per count: `count` entries labelled member_label, other_count of the other label,
    the rest ignored (-1), all at random columns; scores offset + spread * U(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    Q = len(member_counts)
    scores = offset + spread * torch.rand(Q, M, generator=g, dtype=torch.float64)
    labels = torch.full((Q, M), -1, dtype=torch.int8)
    other = 1 - member_label
    for q, n in enumerate(member_counts):
        cols = torch.randperm(M, generator=g)
        labels[q, cols[:n]] = member_label
        labels[q, cols[n:n + other_count]] = other
    return scores, labels


def check_against_oracle(scores, labels, delta, rho, rtol, atol):
    s = scores.clone().requires_grad_(True)
    risk, valid = quadlinear_ap(s, labels, delta, rho, backend="cpp")
    assert bool(valid.all())
    (grad,) = torch.autograd.grad(risk.sum(), s)
    for q in range(scores.shape[0]):
        want_risk, want_grad = oracle_row(scores[q], labels[q], delta, rho)
        torch.testing.assert_close(risk[q], want_risk, rtol=rtol, atol=atol)
        torch.testing.assert_close(grad[q], want_grad, rtol=rtol, atol=atol)


def test_moment_prefix_chunk_edges():
    # The negatives' count sets the moment-prefix chunks (forward and backward).
    scores, labels = make_rows(EDGE_COUNTS, 40, 0, M=max(EDGE_COUNTS) + 60, seed=1)
    check_against_oracle(scores, labels, DELTA, RHO, rtol=1e-9, atol=1e-12)


def test_weight_prefix_chunk_edges():
    # The positives' count sets the weight-prefix chunks (the negatives' gradient).
    scores, labels = make_rows(EDGE_COUNTS, 40, 1, M=max(EDGE_COUNTS) + 60, seed=2)
    check_against_oracle(scores, labels, DELTA, RHO, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("member_label", [0, 1])
def test_scan_offsets_far_from_zero(member_label):
    # Scores near 1000 in a 0.2-wide band, many chunks: the chunk offsets carry centred sums, so
    # the window differences keep the precision of the score range, not of 1000^2.
    counts = [4097, 6001]
    scores, labels = make_rows(counts, 300, member_label, M=6400, seed=3, offset=1000.0, spread=0.2)
    check_against_oracle(scores, labels, DELTA, RHO, rtol=1e-7, atol=1e-9)


def test_wide_delta_spans_many_chunks():
    # delta larger than the score range: every negative is in every positive's quadratic window,
    # so each num_i is a difference of prefixes that lie in different chunks.
    scores, labels = make_rows([4097, 513], 50, 0, M=4200, seed=4)
    check_against_oracle(scores, labels, 2.0, 5.0, rtol=1e-9, atol=1e-12)
