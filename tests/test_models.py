"""Similarity model: shapes, padding equivalence, minimum-length rule, comparator layout, fwd/bwd."""

import math

import pytest
import torch
import torch.nn.functional as F

from hapvr.models.comparator import comparator_reference
from hapvr.models import FrameComparator, RegionAttention, VideoSimilarityModel, repeat_to_min_length
from hapvr.ops import spatial_topk_chamfer_reference, temporal_topk_chamfer


# --- brute-force oracle of the whole head, from SPEC section 1 (float64, loops over frames) ----


def brute_attention(att, x):
    """``w = sigmoid(u . tanh(W x + b))``, ``x <- x w`` with the module's weights."""
    W, b = att.proj.weight.double(), att.proj.bias.double()
    u = att.context.weight.double()[0]
    return x * att.scale * torch.sigmoid(torch.tanh(x @ W.T + b) @ u)[..., None]


def brute_frame_map(q, t, k):
    """Eq. 3 per (query frame x, target frame y): for each query region i the mean of the k largest
    ``<q[x, i], t[y, j]>`` over j, then the mean over i."""
    out = torch.zeros(q.shape[0], t.shape[0], dtype=torch.float64)
    rows = []
    for x in range(q.shape[0]):
        row = []
        for y in range(t.shape[0]):
            sims = q[x] @ t[y].T  # [R_i, R_j]
            row.append(sims.sort(dim=1, descending=True).values[:, :k].mean(1).mean(0))
        rows.append(torch.stack(row))
    return torch.stack(rows) if rows else out


def brute_comparator(psi, m):
    """psi on one unpadded map, layer by layer (SPEC: pad 1, conv, ReLU, 2x2 max-pool, ...)."""
    w = {name: getattr(psi, name) for name in ("conv1", "conv2", "conv3", "fconv")}
    x = m[None, None]
    for name in ("conv1", "conv2"):
        x = F.max_pool2d(F.relu(F.conv2d(F.pad(x, (1, 1, 1, 1)), w[name].weight.double(), w[name].bias.double())), 2)
    x = F.relu(F.conv2d(F.pad(x, (1, 1, 1, 1)), w["conv3"].weight.double(), w["conv3"].bias.double()))
    return F.conv2d(x, w["fconv"].weight.double(), w["fconv"].bias.double())[0, 0]


def brute_temporal(sim, rate):
    """Eq. 5: per row, the mean of its K = max(round(rate T'), 1) largest entries; mean over rows."""
    k = max(round(rate * sim.shape[1]), 1)
    return torch.stack([sim[x].sort(descending=True).values[:k].mean() for x in range(sim.shape[0])]).mean()


def brute_similarity(model, q, t):
    """One query ``[T, R, D]`` against one target ``[T', R, D]``: (video similarity, frame map)."""
    q = F.normalize(q.double(), dim=-1)
    t = F.normalize(t.double(), dim=-1)
    if model.attention is not None:
        q, t = brute_attention(model.attention, q), brute_attention(model.attention, t)
    if model.comparator is not None:  # shorter than 4 frames: self-concatenated until it reaches 4
        q = torch.cat([q] * math.ceil(4 / q.shape[0]))
        t = torch.cat([t] * math.ceil(4 / t.shape[0]))
    m = brute_frame_map(q, t, max(round(model.k_s * q.shape[1]), 1))
    if model.comparator is None:
        return brute_temporal(m, model.k_t), m
    psi = brute_comparator(model.comparator, m)
    if model.head == "residual":  # each psi cell corrects the 4 x 4 frames it pooled
        r = m.clone()
        for x in range(psi.shape[0]):
            for y in range(psi.shape[1]):
                r[4 * x:4 * x + 4, 4 * y:4 * y + 4] += psi[x, y]
        return brute_temporal(F.hardtanh(r), model.k_t), m
    return brute_temporal(F.hardtanh(psi), model.k_t), m


def _feats(B, T, seed=0, D=32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(B, T, 9, D, generator=g), dim=-1)


def test_comparator_output_size_and_init():
    psi = FrameComparator()
    out, mask = psi(torch.randn(3, 13, 9))
    assert out.shape == (3, 3, 2) and mask.shape == (3, 3, 2)
    assert [tuple(c.weight.shape) for c in (psi.conv1, psi.conv2, psi.conv3, psi.fconv)] == \
        [(32, 1, 3, 3), (64, 32, 3, 3), (128, 64, 3, 3), (1, 128, 1, 1)]
    for c in (psi.conv1, psi.conv2, psi.conv3, psi.fconv):
        assert torch.all(c.bias == 0)


def test_comparator_matches_plain_layers_without_padding():
    psi = FrameComparator()
    x = torch.randn(2, 10, 7)
    y = x[:, None]
    y = F.max_pool2d(F.relu(psi.conv1(F.pad(y, (1, 1, 1, 1)))), 2)
    y = F.max_pool2d(F.relu(psi.conv2(F.pad(y, (1, 1, 1, 1)))), 2)
    y = psi.fconv(F.relu(psi.conv3(F.pad(y, (1, 1, 1, 1)))))[:, 0]
    torch.testing.assert_close(psi(x)[0], y)


def _random_masks(B, T, T2, g):
    rows = torch.randint(1, T + 1, (B,), generator=g)
    cols = torch.randint(1, T2 + 1, (B,), generator=g)
    return (torch.arange(T)[None, :, None] < rows[:, None, None]) & (torch.arange(T2)[None, None, :] < cols[:, None, None])


@pytest.mark.parametrize("shape", [(5, 23, 17), (3, 4, 4), (4, 9, 30), (2, 5, 6)])
def test_comparator_equals_layerwise_reference_fwd_bwd(shape):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    psi = FrameComparator().double()
    for p in psi.parameters():  # non-zero biases so that padding mistakes would show
        p.data.copy_(torch.randn(p.shape, generator=g, dtype=torch.double))
    sim = torch.randn(shape, generator=g, dtype=torch.double, requires_grad=True)
    mask = _random_masks(*shape, g)
    out, out_mask = psi(sim, mask)
    ref, ref_mask = comparator_reference(psi, sim, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(out_mask, ref_mask, rtol=0, atol=0)
    w = torch.randn(out.shape, generator=g, dtype=torch.double)
    got = torch.autograd.grad((out * w).sum(), [sim] + list(psi.parameters()))
    want = torch.autograd.grad((ref * w).sum(), [sim] + list(psi.parameters()))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_comparator_inference_chunks_equal_one_batch(monkeypatch):
    g = torch.Generator().manual_seed(torch.initial_seed() % 2**31)
    psi = FrameComparator()
    sim = torch.randn(7, 13, 11, generator=g)
    mask = _random_masks(7, 13, 11, g)
    with torch.no_grad():
        whole, whole_mask = psi(sim, mask)
        monkeypatch.setattr(FrameComparator, "chunk_cells", 2 * 13 * 11)  # two maps per chunk
        assert psi._chunk(sim) == 2
        chunked, chunked_mask = psi(sim, mask)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)  # conv blocking may differ by batch size
    assert torch.equal(chunked_mask, whole_mask)
    assert psi._chunk(sim) == 7  # gradients needed: one batch


def test_comparator_rejects_bad_shapes():
    psi = FrameComparator()
    with pytest.raises(ValueError, match="sim must be"):
        psi(torch.randn(4, 4))
    with pytest.raises(ValueError, match="mask must have the shape"):
        psi(torch.randn(2, 8, 8), torch.ones(2, 8, 7, dtype=torch.bool))


def test_region_attention_weights_in_unit_interval():
    att = RegionAttention(32)
    x = _feats(2, 3)
    w = att.weights(x)
    assert w.shape == (2, 3, 9, 1) and bool(((w > 0) & (w < 1)).all())
    torch.testing.assert_close(att(x), x * w)


def test_repeat_to_min_length():
    x = torch.arange(2 * 5, dtype=torch.float32).view(2, 5)
    out, L = repeat_to_min_length(x, torch.tensor([3, 5]), 4)
    assert L.tolist() == [6, 5]
    assert out[0].tolist() == [0, 1, 2, 0, 1, 2]
    assert out[1, :5].tolist() == x[1].tolist() and out[1, 5] == 0


@pytest.mark.parametrize("comparator,head", [(True, "visil"), (False, "visil"), (True, "residual"),
                                             (True, "attention")])
def test_padded_batch_equals_single_pairs(comparator, head):
    torch.manual_seed(0)
    m = VideoSimilarityModel(dim=32, comparator=comparator, head=head)
    g = torch.Generator().manual_seed(3)
    for p in m.parameters():  # non-zero biases, scores of order 0.1 rather than the init's 1e-3
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    x = _feats(4, 11)
    L = torch.tensor([11, 8, 2, 5])
    out = m(x, query_lengths=L)
    assert out.video.shape == (4, 4) and out.frame_maps.shape[:2] == (4, 4)
    for i in range(4):
        for j in range(4):
            single = m(x[i:i + 1, :L[i]], x[j:j + 1, :L[j]]).video[0, 0]
            torch.testing.assert_close(single, out.video[i, j], atol=1e-5, rtol=1e-5)
            want, want_map = brute_similarity(m, x[i, :L[i]], x[j, :L[j]])
            assert float(out.video[i, j].detach()) == pytest.approx(float(want.detach()), abs=2e-5), (i, j)
            n, n2 = want_map.shape  # the model's valid region, after the minimum-length rule
            assert (int(out.query_lengths[i]), int(out.target_lengths[j])) == (n, n2)
            torch.testing.assert_close(out.frame_maps[i, j, :n, :n2].double(), want_map.detach(), atol=2e-6, rtol=0)


def test_baseline_is_chamfer_of_chamfer():
    m = VideoSimilarityModel(dim=32, attention=False, comparator=False, k_t=0.0)
    q, t = _feats(1, 6, 1), _feats(1, 7, 2)
    maps = spatial_topk_chamfer_reference(q, t, 1)
    expected = temporal_topk_chamfer(maps, k=1)[0, 0]
    assert abs(m.similarity(q[0], t[0]) - float(expected)) < 1e-5
    # and from the definition: mean over query frames of the best target frame's region Chamfer
    qn, tn = F.normalize(q[0].double(), dim=-1), F.normalize(t[0].double(), dim=-1)
    chamfer = torch.tensor([[float((qn[x] @ tn[y].T).max(1).values.mean()) for y in range(7)] for x in range(6)])
    assert m.similarity(q[0], t[0]) == pytest.approx(float(chamfer.max(1).values.mean()), abs=1e-6)


@pytest.mark.parametrize("head", ["visil", "residual", "attention"])
def test_forward_backward_equals_the_brute_force_gradients(head):
    torch.manual_seed(0)
    m = VideoSimilarityModel(dim=32, head=head)
    g = torch.Generator().manual_seed(1)
    for p in m.parameters():  # non-zero biases: every parameter gets a gradient
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.2)
    x, L = _feats(3, 9), torch.tensor([9, 6, 4])
    out = m(x, query_lengths=L)
    assert (out.raw is None) if head == "attention" else out.raw.shape == ((3, 3, 2, 2) if head == "visil" else (3, 3, 9, 9))
    wv, wf = torch.randn(3, 3, generator=g), torch.randn(3, 3, 9, 9, generator=g)
    ((out.video * wv).sum() + (out.frame_maps * wf).sum()).backward()
    names = [n for n, _ in m.named_parameters()]
    params = [p for _, p in m.named_parameters()]
    # the same loss from the brute-force pipeline, pair by pair on the unpadded clips
    total = 0.0
    for i in range(3):
        for j in range(3):
            video, frame_map = brute_similarity(m, x[i, :L[i]], x[j, :L[j]])
            assert float(out.video[i, j].detach()) == pytest.approx(float(video.detach()), abs=2e-5)
            total = total + wv[i, j].double() * video + (wf[i, j, :L[i], :L[j]].double() * frame_map).sum()
    want = torch.autograd.grad(total, params)
    for name, p, w in zip(names, params, want):
        assert p.grad is not None and w.abs().max() > 0, name
        torch.testing.assert_close(p.grad, w, rtol=1e-3, atol=1e-4 * float(w.abs().max()), msg=name)


def test_untrained_residual_head_is_the_chamfer_baseline():
    # psi's last layer and the attention's context start at 0: the same scores as the baseline
    # on fresh random clips of every length (padding and the minimum-length rule included), and
    # a gradient reaches both, so training can move away from the baseline
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    Bq, Bt = 3, 4
    q, t = _feats(Bq, 13, int(torch.randint(0, 99, ()))), _feats(Bt, 10, 100 + int(torch.randint(0, 99, ())))
    ql = torch.randint(1, 14, (Bq,), generator=g)
    tl = torch.randint(1, 11, (Bt,), generator=g)
    m = VideoSimilarityModel(dim=32, head="residual")
    base = VideoSimilarityModel(dim=32, attention=False, comparator=False)
    out = m(q, t, ql, tl)
    torch.testing.assert_close(out.video, base(q, t, ql, tl).video, atol=1e-6, rtol=0)
    assert m.raw_frames_per_cell == 1 and out.raw.shape == out.frame_maps.shape
    out.video.sum().backward()
    assert m.comparator.fconv.weight.grad.abs().sum() > 0 and m.attention.context.weight.grad.abs().sum() > 0
    # the paper's head starts elsewhere: its scores are not the baseline's
    assert VideoSimilarityModel(dim=32).raw_frames_per_cell == 4
    # the attention head is the residual one without psi: the baseline too, and the attention learns
    a = VideoSimilarityModel(dim=32, head="attention")
    assert a.comparator is None and a.min_frames == 1 and a.raw_frames_per_cell == 1
    out = a(q, t, ql, tl)
    torch.testing.assert_close(out.video, base(q, t, ql, tl).video, atol=1e-6, rtol=0)
    assert out.raw is None
    out.video.sum().backward()
    assert a.attention.context.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="head must be one of visil, residual, attention"):
        VideoSimilarityModel(dim=32, head="resnet")


def test_similarity_chunks_long_targets(monkeypatch):
    import hapvr.models.similarity as sim_mod

    monkeypatch.setattr(sim_mod, "MAX_TARGET_CHUNK", 8)
    m = VideoSimilarityModel(dim=32)
    g = torch.Generator().manual_seed(2)
    for p in m.parameters():  # scores of order 0.1 (the default init gives ~1e-3)
        p.data.copy_(torch.randn(p.shape, generator=g) * 0.1)
    q, t = _feats(1, 6, 3)[0], _feats(1, 18, 4)[0]  # chunks of 8, 8, 2 (tail < 4 frames)
    # oracle: the brute-force head on each chunk (the 2-frame tail self-concatenated to 4), averaged
    with torch.no_grad():
        want = sum(float(brute_similarity(m, q, t[s:s + 8])[0]) for s in (0, 8, 16)) / 3
        whole = float(brute_similarity(m, q, t)[0])
    assert m.similarity(q, t) == pytest.approx(want, abs=1e-5)
    # the whole 18 frames as one chunk would give another score: the chunking is what is tested
    assert abs(whole - want) > 0.01
    with pytest.raises(ValueError):
        m.similarity(q[None], t)


def test_torch_compile_gives_the_eager_forward_and_gradients():
    # aot_eager traces through dynamo and AOTAutograd (custom ops via their fake kernels) without
    # generating C++; graph breaks on the data-dependent length logic are allowed.
    torch._dynamo.reset()
    model = VideoSimilarityModel(16)
    q, lengths = torch.randn(3, 9, 9, 16), torch.tensor([9, 6, 3])
    compiled = torch.compile(model, backend="aot_eager")
    eager = model(q, query_lengths=lengths)
    out = compiled(q, query_lengths=lengths)
    torch.testing.assert_close(out.video, eager.video)
    torch.testing.assert_close(out.frame_maps, eager.frame_maps)
    g_eager = torch.autograd.grad(eager.video.sum(), list(model.parameters()))
    g_comp = torch.autograd.grad(out.video.sum(), list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b)
