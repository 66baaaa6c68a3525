"""Sequence-loss scaling: time and peak extra memory of forward+backward of one
distillation loss for growing ``T`` (one video, ``F`` channels, all steps valid).

Memory is measured in a fresh child process (``python -m benchmarks.seqloss``), the way
``tests/test_distill_memory.py`` does: ``MALLOC_MMAP_THRESHOLD_`` makes glibc return big
buffers to the OS on free so RSS tracks live memory; before each measured run the peak
(``VmHWM``) is reset through ``/proc/self/clear_refs`` and the run's extra memory is
``peak − RSS before``. The inputs (student features with ``requires_grad``, teacher
features) exist before the baseline, so "extra" is what the loss itself needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LOSSES: dict[str, tuple[str, dict[str, Any]]] = {
    "global_kl": ("GlobalContextualRelation", {"mode": "kl"}),
    "global_gram": ("GlobalContextualRelation", {"mode": "gram"}),
    "boundary": ("BoundarySaliency", {}),
    "atomic": ("AtomicContrastive", {}),
}


def _plugin(name: str, dim: int):
    import kd_detect.distill as distill

    cls_name, kwargs = LOSSES[name]
    plugin = getattr(distill, cls_name)(**kwargs)
    plugin.setup(dim, dim, 1)
    return plugin


def measure(name: str, steps: list[int], dim: int, repeats: int, threads: int) -> dict[str, Any]:
    """In this process: ``{"control_mb", "reset", "points": {T: {"seconds", "extra_mb"}}}``."""
    import torch

    from benchmarks.common import median, peak_rss_mb, reset_peak
    from kd_detect.models.heads.base import HeadOutput

    torch.set_num_threads(threads)
    plugin = _plugin(name, dim)
    # warm-up (kernels, autograd engine, allocator) on a small input
    w = torch.randn(1, dim, 300, requires_grad=True)
    plugin(HeadOutput(w, w), HeadOutput(w.detach(), w.detach()), torch.ones(1, 300, dtype=torch.bool)).backward()
    resettable = reset_peak()
    base = peak_rss_mb()
    control = torch.ones(64, 2**18)  # 64 MiB: the probe must see it
    control_mb = peak_rss_mb() - base
    del control
    points = {}
    for T in steps:
        torch.manual_seed(0)
        s = torch.randn(1, dim, T, requires_grad=True)
        f = torch.randn(1, dim, T)
        mask = torch.ones(1, T, dtype=torch.bool)
        secs, mbs = [], []
        for _ in range(repeats):
            if resettable:
                reset_peak()
            base = peak_rss_mb()
            t0 = time.perf_counter()
            loss = plugin(HeadOutput(s, s), HeadOutput(f, f), mask)
            loss.backward()
            secs.append(time.perf_counter() - t0)
            mbs.append(peak_rss_mb() - base)
            ok = bool(torch.isfinite(loss)) and bool(torch.isfinite(s.grad).all())
            s.grad = None
            del loss
        points[T] = {"seconds": median(secs), "extra_mb": median(mbs), "finite": ok}
    return {"control_mb": control_mb, "reset": resettable, "points": points}


def run_child(name: str, steps: list[int], dim: int, repeats: int, threads: int, timeout: float = 1800) -> dict:
    """:func:`measure` in a fresh subprocess (clean heap, its own peak RSS)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "benchmarks.seqloss", "--loss", name, "--dim", str(dim),
           "--repeats", str(repeats), "--threads", str(threads), "--steps", *map(str, steps)]
    res = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"seqloss child for {name} failed:\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["points"] = {int(k): v for k, v in out["points"].items()}
    return out


def bench_seq_losses(steps: list[int], dim: int, repeats: int, threads: int,
                     losses: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every loss of ``losses`` (default: all of :data:`LOSSES`) at every ``T``; plus per loss
    the MB per 1k steps (slope of the last two points) and ``mem(T_max) / mem(T_max / 2)``
    when both were measured."""
    out: dict[str, Any] = {"dim": dim, "steps": list(steps), "repeats": repeats, "losses": {}}
    for name in losses or tuple(LOSSES):
        res = run_child(name, list(steps), dim, repeats, threads)
        pts = res["points"]
        t_max = max(pts)
        summary: dict[str, Any] = {"control_mb": res["control_mb"], "peak_reset": res["reset"], "points": pts}
        if t_max // 2 in pts:
            lo, hi = pts[t_max // 2]["extra_mb"], pts[t_max]["extra_mb"]
            summary["mem_ratio_Tmax_over_half"] = hi / lo if lo > 0 else float("nan")
            summary["mb_per_1k_steps"] = (hi - lo) / ((t_max - t_max // 2) / 1000)
            summary["time_ratio_Tmax_over_half"] = pts[t_max]["seconds"] / pts[t_max // 2]["seconds"]
        out["losses"][name] = summary
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loss", choices=sorted(LOSSES), required=True)
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.loss, args.steps, args.dim, args.repeats, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
