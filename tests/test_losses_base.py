"""L_base of eq. 16 (InfoNCE, SSHN), the similarity regulariser, the loss registry and the shared
label checks."""

import math

import pytest
import torch

from hapvr.losses import (
    InfoNCELoss,
    QuadLinearAPLoss,
    SimilarityRegularizer,
    SSHNLoss,
    build_loss,
    labels_from_ids,
    loss_names,
)


def test_infonce_hand_computed():
    sim = torch.tensor([[0.9, 0.6, 0.7, 0.2]], dtype=torch.float64)
    labels = torch.tensor([[1, 1, 0, 0]])
    # tau = 0.1: logits 9, 6, 7, 2; each positive competes with the negatives only.
    neg = math.exp(7) + math.exp(2)
    expected = 0.5 * (-math.log(math.exp(9) / (math.exp(9) + neg)) - math.log(math.exp(6) / (math.exp(6) + neg)))
    assert InfoNCELoss(tau=0.1)(sim, labels).item() == pytest.approx(expected, rel=1e-12)
    assert InfoNCELoss().tau == 0.03


def test_infonce_no_negatives_and_no_positives():
    sim = torch.tensor([[0.9, 0.6], [0.1, 0.2]], dtype=torch.float64)
    # Row 0: positives only (loss 0); row 1: no positive (skipped).
    assert InfoNCELoss(self_label=None)(sim, torch.tensor([[1, 1], [0, 0]])).item() == 0.0


def test_infonce_against_pytorch_metric_learning():
    from pytorch_metric_learning import losses, reducers  # test extra: a missing one fails

    g = torch.Generator().manual_seed(0 + torch.initial_seed())
    emb = torch.nn.functional.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    cls = torch.arange(12) // 2  # two views per video: one positive per query, as in training
    sim, labels = emb @ emb.T, (cls[:, None] == cls[None, :]).long()
    theirs = losses.NTXentLoss(temperature=0.07, reducer=reducers.MeanReducer())(emb, cls)
    torch.testing.assert_close(InfoNCELoss(tau=0.07)(sim, labels), theirs, rtol=1e-10, atol=1e-12)
    import pytorch_metric_learning

    assert pytorch_metric_learning.__version__


def test_sshn_hand_computed():
    sim = torch.tensor([[0.9, 0.3, 0.2], [0.4, 0.8, 0.5], [0.2, 0.5, 0.7]], dtype=torch.float64)
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 1]])
    # Row 0: self 0.9, hardest negative 0.3. Row 1: self 0.8, hardest negative 0.4 (0.5 is a
    # positive). Row 2: self 0.7, hardest negative 0.2.
    expected = (-math.log(0.9) - math.log(0.7) - math.log(0.8) - math.log(0.6) - math.log(0.7) - math.log(0.8)) / 3
    assert SSHNLoss()(sim, labels).item() == pytest.approx(expected)
    # Clamped at eps = 1e-3: a zero self-similarity or a negative at 1 stays finite.
    sim2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert SSHNLoss()(sim2, torch.eye(2, dtype=torch.int64)).item() == pytest.approx(-2 * math.log(1e-3))
    with pytest.raises(ValueError, match="square batch matrix"):
        SSHNLoss()(torch.rand(2, 3), torch.zeros(2, 3, dtype=torch.int64))


def test_similarity_regularizer():
    x = torch.tensor([-1.5, 0.2, 1.3, 3.0], requires_grad=True)
    reg = SimilarityRegularizer()
    value = reg(x)
    assert value.item() == pytest.approx(0.5 + 0.3 + 2.0)
    value.backward()
    assert x.grad.tolist() == [-1.0, 0.0, 1.0, 1.0]
    assert reg([x[:2], x[2:]]).item() == pytest.approx(2.8)  # maps of different sizes
    with pytest.raises(ValueError, match="non-empty"):
        reg([])


def test_registry_builds_every_loss_by_name():
    expected = {"quadlinear_ap", "frame_quadlinear_ap", "infonce", "sshn", "similarity_regularizer",
                "mae", "mse", "contrastive", "triplet", "circle", "fastap", "dir", "blackbox_ap",
                "smooth_ap", "adaptive_margin", "hapvr"}
    assert set(loss_names()) == expected
    for name in expected:
        assert isinstance(build_loss(name), torch.nn.Module)
    assert build_loss("quadlinear_ap", rho=0.5).rho == 0.5
    with pytest.raises(ValueError, match="unknown loss 'quadlinear'"):
        build_loss("quadlinear")


@pytest.mark.parametrize(
    "sim,labels,err,match",
    [
        (torch.rand(3), torch.zeros(3), ValueError, "sim must have 2 dimensions"),
        (torch.rand(2, 3), torch.zeros(2, 4, dtype=torch.int64), ValueError, "labels must have shape"),
        (torch.rand(2, 3), torch.full((2, 3), 3), ValueError, "labels must hold only"),
        (torch.rand(2, 3), torch.zeros(2, 3), TypeError, "labels must be an integer or bool"),
        (torch.tensor([[0.1, float("inf")]]), torch.zeros(1, 2, dtype=torch.int64), ValueError, "sim contains NaN"),
    ],
)
def test_bad_inputs_name_the_argument(sim, labels, err, match):
    with pytest.raises(err, match=match):
        QuadLinearAPLoss()(sim, labels)
    with pytest.raises(err, match=match):
        InfoNCELoss()(sim, labels)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match="tau must be > 0"):
        InfoNCELoss(tau=0)
    with pytest.raises(ValueError, match="self_label"):
        QuadLinearAPLoss(self_label=2)
    with pytest.raises(ValueError, match="delta must be"):
        QuadLinearAPLoss(delta=-1.0)
    with pytest.raises(ValueError, match="rho must be"):
        QuadLinearAPLoss(rho=-1.0)


def test_labels_from_ids():
    labels = labels_from_ids(torch.tensor([0, 0, 1, 1, 2]))
    assert labels.tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    with pytest.raises(TypeError, match="ids must hold integer"):
        labels_from_ids(torch.tensor([0.0, 1.0]))
