"""Run by tests/test_train.py under torchrun (2 processes, gloo), not collected by pytest.

Each rank holds its own clips (different padded lengths, a video shown on both ranks, a
video-in-video guest). The parameter gradients after DDP's averaging of the gathered objective
must equal the gradient of the mean of the ranks' objectives computed in one process from
the same clips, and each rank's labels must match labels built by hand.
"""

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hapvr.models import VideoSimilarityModel
from hapvr.training.batches import Batch
from hapvr.training.config import TrainConfig
from hapvr.training.gather import GatheredSimilarity, gathered_labels
from hapvr.training.batch_loss import BatchLoss, objective_inputs

N, D, DT = 4, 16, 6
LENGTHS = [[6, 5, 4, 6], [5, 3, 5, 2]]  # rank 1 pads to 5 frames, rank 0 to 6
VIDEOS = [[0, 0, 1, 1], [2, 2, 0, 0]]  # video 0 is drawn by both ranks
GUESTS = [[-1, -1, -1, -1], [-1, 1, -1, -1]]  # rank 1's clip 1 has video 1 pasted in


def make_batch(r, g):
    lengths = torch.tensor(LENGTHS[r])
    T = int(lengths.max())
    inside = torch.arange(T)[None, :] < lengths[:, None]
    feats = torch.randn(N, T, 9, D, generator=g) * inside[..., None, None]
    teacher = F.normalize(torch.randn(N, T, DT, generator=g), dim=-1) * inside[..., None]
    ids, guests = torch.tensor(VIDEOS[r]), torch.tensor(GUESTS[r])
    pos = (ids[:, None] == ids[None, :]) | (guests[:, None] == ids[None, :]) | (guests[None, :] == ids[:, None])
    return Batch(feats, teacher, lengths, pos, ids, guests)


def labels_by_hand(batches, r):
    labels = torch.zeros(N, 2 * N, dtype=torch.int8)
    for i in range(N):
        for k in range(2):
            for j in range(N):
                if k == r:
                    labels[i, k * N + j] = int(batches[r].positives[i, j])
                else:
                    a, b = batches[r], batches[k]
                    related = (a.video_index[i] == b.video_index[j] or a.guests[i] == b.video_index[j]
                               or b.guests[j] == a.video_index[i])
                    labels[i, k * N + j] = -1 if related else 0
    return labels


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    g = torch.Generator().manual_seed(1234)  # every rank builds every rank's clips
    batches = [make_batch(r, g) for r in range(2)]
    torch.manual_seed(0)
    model = VideoSimilarityModel(D)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    reference = copy.deepcopy(model)
    objective = BatchLoss(TrainConfig())

    ddp = torch.nn.parallel.DistributedDataParallel(GatheredSimilarity(model))
    mine = batches[rank]
    out = ddp(mine.features, mine.lengths)
    labels = gathered_labels(mine.positives, mine.video_index, mine.guests)
    assert torch.equal(labels, labels_by_hand(batches, rank)), labels
    assert (labels == -1).any()
    x = objective_inputs(out, mine, model.min_frames, torch.device("cpu"), labels, GatheredSimilarity.offset(N))
    loss, parts = objective(x)
    loss.backward()

    T = max(LENGTHS[0] + LENGTHS[1])
    everyone = torch.cat([F.pad(b.features, (0, 0, 0, 0, 0, T - b.features.shape[1])) for b in batches])
    all_lengths = torch.cat([b.lengths for b in batches])
    losses = []
    for r, b in enumerate(batches):
        out_r = reference(everyone[r * N:(r + 1) * N], everyone, b.lengths, all_lengths)
        losses.append(objective(objective_inputs(out_r, b, reference.min_frames, torch.device("cpu"),
                                                 labels_by_hand(batches, r), r * N))[0])
    torch.stack(losses).mean().backward()

    torch.testing.assert_close(loss.detach(), losses[rank].detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    if rank == 0:
        print(f"gathered gradients match (loss per rank {[round(float(v), 4) for v in torch.stack(losses).detach()]})", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
