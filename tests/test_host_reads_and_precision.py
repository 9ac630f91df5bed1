"""What a GPU run depends on, checked on CPU tensors (the dispatcher sees the same calls):

- under ``torch.autocast`` the spatial op's GEMMs run in bf16, forward and backward;
- the four hot ops read nothing back to the host (no ``.item()``, ``nonzero``, ``bool(tensor)``...);
- ``precision="auto"`` resolves per device.

Inputs are fresh random draws each run (seed printed by the ``fresh_seed`` fixture).
"""

from __future__ import annotations

import pytest
import torch
from dispatch_probe import OpLog

from hapvr.evaluation.levels import device_of
from hapvr.losses import FrameQuadLinearAPLoss
from hapvr.losses.frame_quadlinear_ap import positive_pairs
from hapvr.models import VideoSimilarityModel
from hapvr.ops import quadlinear_ap, spatial_topk_chamfer, spatial_topk_chamfer_reference, temporal_topk_chamfer
from hapvr.precision import cpu_bf16_hardware, resolve_precision


def unit(*shape, dtype=torch.float32):
    return torch.nn.functional.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1).to(dtype)


def separated(Bq, T, Bt, T2, R=9, D=32):
    """bf16-representable unit features whose region similarities differ by about 0.05 within each
    (query region, target frame): target region j points along axis j, each query region weighs
    the axes with its own permutation of 0.2 ... 1.0 (plus 0.1% noise)."""
    t = torch.eye(R, D).expand(Bt, T2, R, D) + 0.001 * torch.randn(Bt, T2, R, D)
    levels = torch.linspace(0.2, 1.0, R)
    weights = levels[torch.argsort(torch.rand(Bq, T, R, R), dim=-1)]  # a permutation per query region
    q = torch.nn.functional.pad(weights, (0, D - R)) + 0.001 * torch.randn(Bq, T, R, D)
    norm = torch.nn.functional.normalize
    return norm(q, dim=-1).bfloat16().float(), norm(t, dim=-1).bfloat16().float()


@pytest.mark.parametrize("k", [1, 2, 9])
def test_autocast_runs_the_spatial_gemms_in_bf16_forward_and_backward(k):
    # The bf16 path rounds the similarities to bf16 before it selects, so nearly equal ones may swap;
    # on separated inputs both paths select the same regions and differ by bf16 rounding only.
    q, t = separated(2, 6, 3, 5)
    q.requires_grad_()
    t.requires_grad_()
    ql, tl = torch.tensor([6, 4]), torch.tensor([5, 2, 5])
    with OpLog() as log:
        with torch.autocast("cpu", torch.bfloat16):
            maps = spatial_topk_chamfer(q, t, k, ql, tl)
        forward = log.gemm_dtypes()
        log.calls.clear()
        g = torch.randn_like(maps)
        (maps * g).sum().backward()
        backward = log.gemm_dtypes()
    assert forward and all(dtypes == [torch.bfloat16] * len(dtypes) for _, dtypes in forward), forward
    assert len(backward) >= 2 and all(dtypes == [torch.bfloat16] * len(dtypes) for _, dtypes in backward), backward
    assert maps.dtype == torch.float32 and q.grad.dtype == t.grad.dtype == torch.float32
    # values and gradients within bf16 rounding of fp32 (8 bits of mantissa: 4e-3 relative per rounding)
    q2, t2 = q.detach().clone().requires_grad_(), t.detach().clone().requires_grad_()
    ref = spatial_topk_chamfer_reference(q2, t2, k, ql, tl)
    (ref * g).sum().backward()
    torch.testing.assert_close(maps, ref.detach(), rtol=2 ** -7, atol=1e-3)
    # Each tile's GEMM returns bf16 (rounded to 2^-8 of its partial sum) before the fp32 sum over
    # tiles, so the bound is on the sum of the terms' magnitudes: sum |g| / R times the largest feature.
    R = q.shape[2]
    bound_q = float(g.abs().sum((1, 3)).max()) / R * float(t.detach().abs().max())
    bound_t = float(g.abs().sum((0, 2)).max()) / R * float(q.detach().abs().max())
    for got, want, bound in ((q.grad, q2.grad, bound_q), (t.grad, t2.grad, bound_t)):
        got, want = got.detach(), want.detach()
        assert float((got - want).abs().max()) <= 2 ** -6 * bound, (float((got - want).abs().max()), bound)
        assert float((got - want).abs().max()) > 0  # the bf16 path really ran


def test_outside_autocast_and_for_fp64_nothing_is_cast():
    q, t = unit(1, 3, 9, 16), unit(1, 4, 9, 16)
    with OpLog() as log:
        spatial_topk_chamfer(q, t, 1, backend="tiled")
    assert all(dtypes[0] == torch.float32 for _, dtypes in log.gemm_dtypes())
    with OpLog() as log, torch.autocast("cpu", torch.bfloat16):
        out = spatial_topk_chamfer(q.double(), t.double(), 1, backend="tiled")
    assert out.dtype == torch.float64 and all(d[0] == torch.float64 for _, d in log.gemm_dtypes())


@pytest.mark.parametrize("backend", ["cpp", "tiled"])
def test_the_spatial_op_reads_nothing_back(backend):
    q = unit(2, 7, 9, 16).requires_grad_()
    t = unit(3, 5, 9, 16).requires_grad_()
    ql, tl = torch.tensor([7, 3]), torch.tensor([5, 1, 0])
    for k in (1, 3, 9):
        with OpLog() as log:
            maps = spatial_topk_chamfer(q, t, k, ql, tl, backend=backend)
            maps.square().sum().backward()
        assert log.host_reads() == [] and log.host_copies() == [], (k, log.host_reads(), log.host_copies())
        assert any(name.startswith("hapvr::") for name, _ in log.calls)


def test_the_temporal_op_quadlinear_ap_and_the_frame_loss_read_nothing_back():
    sim = torch.randn(3, 4, 10, 12, requires_grad=True)
    ql, tl = torch.tensor([10, 4, 1])[:, None], torch.tensor([12, 5, 1, 0])[None, :]
    with OpLog() as log:
        for kwargs in (dict(k=2), dict(rate=0.3)):
            out = temporal_topk_chamfer(sim, query_lengths=ql, target_lengths=tl, **kwargs)
            out.sum().backward()
    assert log.host_reads() == [] and log.host_copies() == []
    scores = torch.randn(5, 20, requires_grad=True)
    labels = torch.randint(-1, 2, (5, 20))
    with OpLog() as log:
        risk = quadlinear_ap(scores, labels).risk
        risk.sum().backward()
    assert log.host_reads() == [] and log.host_copies() == []
    N, T = 4, 6
    frame_sims = torch.randn(N, N, T, T, requires_grad=True)
    teacher = unit(N, T, 8)
    pair_labels = (torch.arange(N)[:, None] // 2 == torch.arange(N)[None, :] // 2).long()
    lengths = torch.tensor([6, 4, 5, 6])
    loss = FrameQuadLinearAPLoss()
    pairs = positive_pairs(pair_labels)
    with OpLog() as log:
        value = loss(frame_sims, teacher, pair_labels, lengths, pairs)
        value.backward()
    assert log.host_reads() == [] and log.host_copies() == [] and float(value.detach()) > 0
    # the same value as the pairs found on the device (one nonzero: a host read)
    with OpLog() as log:
        again = loss(frame_sims, teacher, pair_labels, lengths)
    assert log.host_reads() == ["aten::nonzero"]
    torch.testing.assert_close(value, again)


def test_bad_values_still_give_one_clear_error_on_the_cpu():
    q, t = unit(1, 3, 9, 8), unit(1, 2, 9, 8)
    q[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="query contains NaN or infinite values"):
        spatial_topk_chamfer(q, t, 1)
    with pytest.raises(ValueError, match=r"target_lengths must lie in \[0, 2\] \(the padded length\), got \[3\]"):
        spatial_topk_chamfer(t, t, 1, None, torch.tensor([3]))
    with pytest.raises(ValueError, match=r"found \[2\]"):
        quadlinear_ap(torch.zeros(1, 3), torch.tensor([[1, 2, 0]]))
    with pytest.raises(ValueError, match=r"pairs must lie in \[0, 3\]"):
        FrameQuadLinearAPLoss()(torch.zeros(4, 4, 3, 3), unit(4, 3, 8), torch.eye(4, dtype=torch.long), None,
                                (torch.tensor([0, 4]), torch.tensor([0, 1])))


def test_auto_precision_resolves_per_device(monkeypatch):
    import hapvr.precision as precision

    assert resolve_precision("auto", "cuda") == resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("fp16", "cuda") == "fp16" and resolve_precision("fp32", "cuda") == "fp32"
    for hardware in (None, "avx512_bf16", "amx"):  # the CPU keeps fp32 (the scores users hold)
        monkeypatch.setattr(precision, "cpu_bf16_hardware", lambda flags=None, h=hardware: h)
        assert resolve_precision("auto", "cpu") == "fp32", hardware
    assert resolve_precision("auto", "meta") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of auto, bf16, fp16, fp32, got 'tf32'"):
        resolve_precision("tf32", "cpu")
    assert cpu_bf16_hardware("fpu sse avx2 avx512f") is None
    assert cpu_bf16_hardware("avx2 avx512_bf16 avx512f") == "avx512_bf16"
    assert cpu_bf16_hardware("avx512_bf16 amx_tile amx_bf16") == "amx"


def test_tf32_switch(monkeypatch):
    from hapvr.precision import configure_tf32

    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        assert configure_tf32("cpu") is False
        monkeypatch.setenv("HAPVR_TF32", "1")
        assert configure_tf32("cuda") is True and torch.backends.cuda.matmul.allow_tf32
        monkeypatch.setenv("HAPVR_TF32", "0")
        assert configure_tf32("cuda") is False and not torch.backends.cuda.matmul.allow_tf32
        monkeypatch.setenv("HAPVR_TF32", "yes")
        with pytest.raises(ValueError, match="HAPVR_TF32 must be 0 or 1"):
            configure_tf32("cuda")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = saved


def test_a_model_in_eval_mode_takes_its_precision_from_the_device(monkeypatch):
    import hapvr.models.similarity as similarity

    def spatial_dtypes(log):  # the inputs of the spatial op (any backend), as the dispatcher saw them
        return [dtypes[0] for name, dtypes in log.calls if name.startswith("hapvr::spatial_topk_chamfer")
                and not name.endswith("backward")]

    model = VideoSimilarityModel(16, attention=False, comparator=False).eval()
    assert model.precision == "auto"
    q, t = unit(1, 5, 9, 16), unit(2, 4, 9, 16)
    with OpLog() as log:
        model(q, t)
    assert spatial_dtypes(log) == [torch.float32]  # auto on the CPU
    monkeypatch.setattr(similarity, "resolve_precision", lambda p, device: "bf16")  # as on CUDA
    with OpLog() as log:
        model(q, t)
    assert spatial_dtypes(log) == [torch.bfloat16]
    model.train()
    with OpLog() as log:
        model(q, t)
    assert spatial_dtypes(log) == [torch.float32]  # training: autocast decides


def test_a_parameter_free_baseline_follows_its_device():
    baseline = VideoSimilarityModel.baseline(16, 0.1, 0.03)
    assert device_of(baseline) == torch.device("cpu")
    assert device_of(baseline.to("meta")) == torch.device("meta")
    assert list(baseline.state_dict()) == []  # the anchor is not saved


@pytest.mark.parametrize("kind", ["baseline", "model"])
def test_the_engine_reads_the_device_once_per_batch(tmp_path, kind):
    """The main thread's host reads while scoring: one per batch (its scores); the reader thread
    works on host memory only (and a dispatch mode is per thread, so it is not counted here)."""
    from hapvr.evaluation import engine
    from hapvr.evaluation.feature_store import FeatureStore, write_features
    from hapvr.evaluation.scorers import ChamferBaseline, ModelScorer

    lengths = [3, 5, 9, 12, 2, 7, 4]
    write_features(tmp_path / "f.h5", {f"v{i}": unit(n, 9, 16) for i, n in enumerate(lengths)})
    scorer = ChamferBaseline() if kind == "baseline" else ModelScorer(VideoSimilarityModel(16))
    cfg = engine.EngineConfig(max_batch_videos=2, max_padding_ratio=10.0)
    ids = [f"v{i}" for i in range(len(lengths))]
    with FeatureStore(tmp_path / "f.h5") as store:
        batches = engine.plan_batches([engine.Chunk(v, 0, store.length(v)) for v in ids], 1, cfg)
        counted = {}
        original = engine._score_batches

        def logged(*args, **kwargs):
            with OpLog() as log:
                original(*args, **kwargs)
            counted["reads"] = log.host_reads()

        engine._score_batches = logged
        try:
            scores = engine.compute_scores(scorer, store, ids[:3], ids, cfg, progress=False)
        finally:
            engine._score_batches = original
        assert counted["reads"] == ["aten::tolist"] * len(batches) and len(batches) == 4
        # the same scores as one pair at a time
        for q in ids[:3]:
            for t in ids:
                a, b = scorer.index(store.load(q))[None], scorer.index(store.load(t))[None]
                a = engine.repeat_to(a[0], scorer.min_frames)[None]
                b = engine.repeat_to(b[0], scorer.min_frames)[None]
                want = scorer.pairwise(a, torch.tensor([a.shape[1]]), b, torch.tensor([b.shape[1]]))
                assert scores[q][t] == pytest.approx(float(want[0, 0]), abs=1e-5)


def test_engine_edges_queries_none_and_a_pickled_pca(tmp_path):
    import pickle

    from hapvr.evaluation import engine
    from hapvr.evaluation.feature_store import FeatureStore, write_features
    from hapvr.evaluation.scorers import ChamferBaseline
    from hapvr.features.pca import PCAWhitening

    write_features(tmp_path / "f.h5", {"a": unit(3, 9, 16), "b": unit(4, 9, 16)})
    with FeatureStore(tmp_path / "f.h5") as store:
        assert engine.compute_scores(ChamferBaseline(), store, [], ["a", "b"], progress=False) == {}
    pca = PCAWhitening(16, 8).fit(torch.randn(200, 16))
    again = pickle.loads(pickle.dumps(pca))
    x = torch.randn(3, 16)
    torch.testing.assert_close(again(x), pca(x))
    with pytest.raises(ValueError, match="positive_pairs reads labels on the host"):
        positive_pairs(torch.ones(2, 2, device="meta"))


def test_comparator_chunks_follow_the_gpu_memory():
    from hapvr.models.comparator import FrameComparator, gpu_chunk_cells

    assert gpu_chunk_cells(torch.device("cuda"), total_memory=80 * 10 ** 9) == 80 * 10 ** 9 // 16 // 256
    assert gpu_chunk_cells(torch.device("cuda"), total_memory=10 ** 6) == 1 << 18  # never below the CPU's
    assert FrameComparator.chunk_cells == 1 << 18


def test_engine_bounds_follow_the_device():
    from hapvr.evaluation.engine import EngineConfig

    assert EngineConfig.for_device("cpu") == EngineConfig()
    gpu = EngineConfig.for_device("cuda", total_memory=80 * 10 ** 9)
    assert gpu.max_map_elements == 80 * 10 ** 9 // 256 and gpu.max_batch_frames == 80 * 10 ** 9 // 32 // 18432
    assert EngineConfig.for_device("cuda", total_memory=10 ** 6).max_map_elements == EngineConfig.max_map_elements
    assert EngineConfig.for_device("cuda", total_memory=80 * 10 ** 9, max_map_elements=7).max_map_elements == 7
