"""What training says off a terminal (a pipe, nohup, a batch scheduler), where no progress bar is drawn:
a line per epoch, at most one every INTERVAL_S seconds (the first and the last epoch always), and a
summary of a finished run (summary(), printed by the CLI)."""

from __future__ import annotations

import sys
import time

from .objectives import BOUND_NAMES

INTERVAL_S = 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class EpochLines:
    """Prints a record of metrics.jsonl as one line on stdout, when due."""

    def __init__(self, epochs: int, interval: float = INTERVAL_S):
        self.epochs, self.interval = epochs, interval
        self.start = self.last = time.monotonic()
        self.best: tuple[float, int] | None = None

    def epoch(self, record: dict, bound: str = "neg_elbo") -> None:
        value = record.get(f"val_{bound}")
        if isinstance(value, (int, float)) and (self.best is None or value < self.best[0]):
            self.best = (value, record["epoch"])
        now = time.monotonic()
        if record["epoch"] not in (1, self.epochs) and now - self.last < self.interval:
            return
        self.last = now
        name = BOUND_NAMES.get(bound, bound)
        train = record.get(f"train_{bound}", record.get("train_neg_elbo"))
        parts = [f"epoch {record['epoch']}/{self.epochs}"]
        if isinstance(train, (int, float)):
            parts.append(f"train {name} {train:.3f}")
        if isinstance(value, (int, float)):
            parts.append(f"validation {name} {value:.3f} (best {self.best[0]:.3f}, epoch {self.best[1]})")
        parts.append(f"{record.get('images_per_second', 0):,.0f} images/s, {_duration(now - self.start)} elapsed")
        print("vaekit: " + ", ".join(parts), flush=True)


def wanted(progress: bool | None) -> bool:
    """Epoch lines: progress left to vaekit (None) and no terminal for a bar."""
    return progress is None and not sys.stderr.isatty()


def summary(metrics: list[dict]) -> str | None:
    """One line on a finished run: epochs, time, the best validation bound and its epoch."""
    scored = [m for m in metrics if isinstance(m.get("val_neg_iwae", m.get("val_neg_elbo")), (int, float))]
    if not scored:
        return None
    bound = "neg_iwae" if "val_neg_iwae" in scored[-1] else "neg_elbo"
    best = min((m for m in scored if isinstance(m.get(f"val_{bound}"), (int, float))), key=lambda m: m[f"val_{bound}"])
    seconds = sum(m.get("seconds", 0.0) for m in metrics if isinstance(m.get("seconds"), (int, float)))
    return (f"trained {metrics[-1]['epoch']} epochs in {_duration(seconds)}; best validation {BOUND_NAMES[bound]} "
            f"{best[f'val_{bound}']:.3f} nats at epoch {best['epoch']}")
