"""python -m hapvr.pca: the PCA whitening learned from an HDF5 file of raw region descriptors,
and its use by the trainer (--pca)."""

import h5py
import pytest
import torch

from hapvr.features.pca import PCAWhitening
from hapvr.features.pca import PCAFileError, read_pca_file as load_pca
from hapvr.pca import main as pca_main

D_IN, DIM = 24, 12


def write_raw(path, lengths, seed=0, d=D_IN, attrs=None):
    """Correlated, anisotropic, off-centre region vectors; one video inside a group, as
    hapvr.extract writes ids with a folder part. Returns all vectors [n, d]."""
    g = torch.Generator().manual_seed(seed + torch.initial_seed())
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) * torch.logspace(0, -1, d, dtype=torch.float64)[:, None]
    centre = torch.randn(d, generator=g, dtype=torch.float64)
    allx = []
    with h5py.File(path, "w") as f:
        for k, T in enumerate(lengths):
            x = (torch.randn(T, 9, d, generator=g, dtype=torch.float64) @ mix + centre).float()
            f.create_dataset(f"sub/v{k}" if k == 0 else f"v{k}", data=x.numpy())
            allx.append(x.reshape(-1, d))
        for key, value in (attrs or {"hapvr_space": "raw", "backbone": "efficientnet_lite0"}).items():
            f.attrs[key] = value
    return torch.cat(allx)


def whitened_cov(state, x):
    z = (x.double() - state["mean"].double()) @ state["projection"].double()
    z = z - z.mean(0)
    return z.T @ z / (z.shape[0] - 1)


def test_pca_of_every_frame_whitens_and_equals_fit(tmp_path, capsys):
    feats, out = tmp_path / "raw.hdf5", tmp_path / "pca.pt"
    x = write_raw(feats, [30, 0, 45, 25])
    assert pca_main(["--features", str(feats), "--output", str(out), "--dim", str(DIM), "--max-frames", "1000",
                     "--no-progress"]) == 0
    assert "PCA 24 -> 12 dims learned from 100 frames (900 region vectors) of 3 videos" in capsys.readouterr().err
    content = torch.load(out, weights_only=True)
    assert (content["in_dim"], content["out_dim"], content["frames"], content["backbone"]) == (D_IN, DIM, 100,
                                                                                              "efficientnet_lite0")
    state = load_pca(str(out), D_IN, DIM, "efficientnet_lite0")
    pca = PCAWhitening(D_IN, DIM)
    pca.load_state_dict(state)
    assert bool(pca.fitted) and pca(x[:5]).shape == (5, DIM)
    # The whitened sample (before the final L2) has identity covariance; the streamed float64
    # moments give the same whitening as fitting on all vectors at once.
    torch.testing.assert_close(whitened_cov(state, x), torch.eye(DIM, dtype=torch.float64), atol=1e-3, rtol=0)
    direct = PCAWhitening(D_IN, DIM).fit(x)
    torch.testing.assert_close(state["mean"], direct.mean, atol=1e-5, rtol=1e-5)
    gram = state["projection"].double() @ state["projection"].double().T  # blind to eigenvector signs
    torch.testing.assert_close(gram, direct.projection.double() @ direct.projection.double().T, atol=1e-4, rtol=1e-4)


def test_pca_sample_is_capped_random_and_still_whitens(tmp_path):
    feats = tmp_path / "raw.hdf5"
    x = write_raw(feats, [200, 150, 250])
    states = []
    for seed in (0, 1):
        out = tmp_path / f"pca{seed}.pt"
        assert pca_main(["--features", str(feats), "--output", str(out), "--dim", str(DIM), "--max-frames", "300",
                         "--seed", str(seed), "--no-progress"]) == 0
        content = torch.load(out, weights_only=True)
        assert (content["frames"], content["vectors"]) == (300, 2700)
        states.append(content["pca"])
        # 2700 of 5400 vectors: the whole file is whitened up to the sample's estimation error.
        cov = whitened_cov(content["pca"], x)
        assert float((cov - torch.eye(DIM, dtype=torch.float64)).abs().max()) < 0.15
        assert float(cov.diagonal().mean()) == pytest.approx(1.0, abs=0.1)
    assert not torch.equal(states[0]["mean"], states[1]["mean"])  # another seed, another sample


def test_pca_user_errors_name_the_argument(tmp_path, capsys):
    out = str(tmp_path / "pca.pt")

    def error(*args):
        assert pca_main([*args, "--output", out, "--no-progress"]) == 2
        return capsys.readouterr().err

    assert error("--features", str(tmp_path / "missing.hdf5")).startswith("error: --features ")
    assert "no such file" in error("--features", str(tmp_path / "missing.hdf5"))
    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("a", data=torch.zeros(3, 9, D_IN).numpy())
        f.create_dataset("b", data=torch.zeros(3, 8, D_IN).numpy())
    msg = error("--features", str(bad))
    assert "--features" in msg and "'b'" in msg and "(3, 8, 24)" in msg and "[T, 9, D_in]" in msg
    whitened = tmp_path / "whitened.hdf5"
    write_raw(whitened, [4], attrs={"hapvr_space": "whitened"})
    assert "--raw" in error("--features", str(whitened))
    raw = tmp_path / "raw.hdf5"
    write_raw(raw, [4])
    assert "--dim 64 is larger" in error("--features", str(raw), "--dim", "64")
    assert "argument --max-frames: must be >= 1, got 0" in error("--features", str(raw), "--max-frames", "0")
    not_hdf5 = tmp_path / "text.hdf5"
    not_hdf5.write_text("hello")
    assert "not a readable HDF5 file" in error("--features", str(not_hdf5))
    assert not (tmp_path / "pca.pt").exists()


def test_load_pca_checks_sizes_and_backbone(tmp_path):
    feats, out = tmp_path / "raw.hdf5", tmp_path / "pca.pt"
    write_raw(feats, [20])
    assert pca_main(["--features", str(feats), "--output", str(out), "--dim", str(DIM), "--no-progress"]) == 0
    with pytest.raises(PCAFileError, match="maps 24 to 12 dims; this run needs 1752 to 512"):
        load_pca(str(out), 1752, 512)
    with pytest.raises(PCAFileError, match="learned on efficientnet_lite0 descriptors, this run uses --backbone resnet50"):
        load_pca(str(out), D_IN, DIM, "resnet50")
    with pytest.raises(PCAFileError, match="no such file"):
        load_pca(str(tmp_path / "none.pt"), D_IN, DIM)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(PCAFileError, match="not a PCA file"):
        load_pca(str(tmp_path / "junk.pt"), D_IN, DIM)
    # hapvr.extract --fit-pca saves the bare state dict: accepted too.
    torch.save(PCAWhitening(D_IN, DIM).fit(torch.randn(100, D_IN)).state_dict(), tmp_path / "bare.pt")
    assert load_pca(str(tmp_path / "bare.pt"), D_IN, DIM, "resnet50")["projection"].shape == (D_IN, DIM)


def test_streamed_moments_equal_torch_cov_across_chunks():
    from hapvr.features.pca import Moments

    x = torch.randn(5000, 7, dtype=torch.float64) * torch.arange(1, 8) + 100  # far from 0: the shift matters
    moments = Moments(7, chunk=1000)
    for part in x.split(37):  # chunks straddle the parts
        moments.add(part)
    mean, cov = moments.mean_cov()
    assert moments.n == 5000
    torch.testing.assert_close(mean, x.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(cov, torch.cov(x.T), rtol=1e-10, atol=1e-10)
