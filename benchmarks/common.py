"""Shared benchmark plumbing: resumable JSON-lines results, peak-memory sampling, tables and plots."""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def rss_bytes(field: str = "VmRSS") -> int:
    """Resident set size of this process (Linux): current (``VmRSS``) or its high-water mark (``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux ≥ 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def release_free_heap() -> None:
    """Hand the C allocator's freed pages back to the OS (glibc), so that RSS measures live memory rather
    than what earlier runs in this process left cached; without it a second run reads far too low."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS keeps the allocator's cache
        pass


@contextmanager
def peak_memory(device: str) -> Iterator[dict[str, float]]:
    """Peak memory above the starting level while the block runs: CUDA allocator, or the kernel's RSS
    high-water mark (reset at the start), else RSS sampled every 50 ms (which misses a peak shorter than that)."""
    result: dict[str, float] = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        yield result
        result["peak_mib"] = (torch.cuda.max_memory_allocated() - start) / 2**20
        return
    release_free_heap()
    exact = reset_rss_peak()
    start, peak, stop = rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        if exact:
            peak[0] = max(peak[0], rss_bytes("VmHWM"))
        result["peak_mib"] = max(peak[0] - start, 0) / 2**20


class ResultLog:
    """Append-only JSON-lines results keyed by run name, so an interrupted benchmark resumes."""

    def __init__(self, path: Path, logged_only: bool = False) -> None:
        """``logged_only``: run nothing; :meth:`run` returns the logged row or None (tables and plots of
        what has been measured so far)."""
        self.path = path
        self.logged_only = logged_only
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    self.rows[row["name"]] = row

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        if name in self.rows or self.logged_only:
            return self.rows.get(name)
        row = {"name": name, **fn()}
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        self.rows[name] = row
        return row


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """Rows as a Markdown table; ``columns`` are (header, key, format)."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = []
        for _, key, fmt in columns:
            value = row.get(key)
            cells.append("–" if value is None else fmt.format(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def line_plot(panels: dict[str, dict[str, list[tuple[float, float]]]], path: Path, xlabel: str, ylabel: str,
              title: str, log_x: bool = False) -> None:
    """Panels (title → series label → (x, y) points) side by side as one PNG; log-scale y, since
    perplexities span orders of magnitude; a label keeps its colour in every panel."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    colours = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    for ax, (panel, series) in zip(axes.flat, panels.items()):
        for label, points in series.items():
            points = sorted(points)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label, color=colours[label])
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")
