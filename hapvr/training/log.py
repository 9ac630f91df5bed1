"""A training run's log: OUT/log.csv and TensorBoard, written by the main process only."""

from __future__ import annotations

import csv
import io
import os
import sys

from hapvr.io.files import write_text

LOG_COLUMNS = ("loss", "frame_ap", "video_ap", "infonce", "sshn", "regularizer", "pooled_ap")


def truncate_log(path: str, step: int) -> None:
    """Keeps the header and the rows of steps <= ``step`` of a CSV log (rewritten atomically)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) <= step]
    text = io.StringIO(newline="")
    csv.writer(text).writerows(kept)
    write_text(path, text.getvalue())


class TrainLog:
    """OUT/log.csv and TensorBoard (main process only). On --resume, rows a killed run logged
    after its checkpoint are dropped, so every step appears once."""

    def __init__(self, cfg, main: bool, start_step: int):
        self.cfg, self.main = cfg, main
        self.writer = self.file = self.csv = None
        if not self.main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(cfg.out, "tensorboard"), purge_step=start_step)
        except ImportError:
            print("note: tensorboard is not installed; logging to CSV only", file=sys.stderr)
        path = os.path.join(cfg.out, "log.csv")
        new = not (cfg.resume and os.path.isfile(path))
        if not new:
            truncate_log(path, start_step)
        self.file = open(path, "w" if new else "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "lr", *LOG_COLUMNS, "seconds"])

    def step(self, done: int, lr: float, parts: dict, seconds: float) -> None:
        if not self.main:
            return
        self.csv.writerow([done, f"{lr:.6g}", *(f"{parts.get(k, 0.0):.6f}" for k in LOG_COLUMNS), f"{seconds:.1f}"])
        self.file.flush()
        if self.writer is not None:
            self.writer.add_scalar("lr", lr, done)
            for k, v in parts.items():
                self.writer.add_scalar(f"loss/{k}", v, done)

    def benchmark(self, done: int, res: dict, name: str = "benchmark") -> None:
        if self.writer is not None:
            for t, r in res.items():
                self.writer.add_scalar(f"{name}/mAP_{t}", r.map, done)
                self.writer.add_scalar(f"{name}/uAP_{t}", r.uap, done)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
