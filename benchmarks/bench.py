"""``make bench``: the kd_detect performance report (runs/bench/report.md and report.json).

    python benchmarks/bench.py [--quick] [--threads 1] [--device cpu|cuda] [--out runs/bench]

Sections, all on generated data of realistic shape (Charades-like: T≈60–120, rgb + flow
1024-d, 157 classes; TSU-like: T≈1,500–2,000, rgb 1024-d + pose 512-d, 51 classes):

1. data loading: ``FeatureDataModule`` on HDF5 vs one ``.npy`` per video and modality
   (same collate), fp16/fp32, lazy/preload, the raw read bandwidth of the same bytes, and
   the loader with 0/1/2 worker processes;
2. distillation overhead: training step of the plain RGB PDAN vs the KD student with a
   live teacher / a teacher cache, and each plugin alone;
3. sequence-loss scaling: time and peak extra memory of L_global (kl, gram), L_boundary,
   L_atomic for T up to 16,384;
4. inference: RGB PDAN forwards per second at batch 1 and batched;
5. compute efficiency: FLOP/s of a PDAN training step over a dense fp32 matmul's;
6. bf16 autocast: every plugin's forward+backward finite or not;
7. command line: wall time of ``kd-detect --help`` and ``kd-detect check small.h5``;
8. event threshold search: the validation cost of ``event_threshold: auto`` (ten cuts)
   against event mAP at one cut, TSU-like predictions.

``--device cuda`` runs sections 1, 2 and 4 on the GPU (batches converted there, steps
under bf16-mixed autocast where supported, else fp16); without a visible GPU it says so
in one line and exits 0.

Every ratio compares variants timed interleaved in one process (medians), so the noise
of a shared machine largely cancels. ``--quick`` runs a reduced version (same keys).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `benchmarks` and `kd_detect` importable
    sys.path.insert(0, str(ROOT))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(1, str(ROOT / "src"))

from benchmarks.common import CHARADES, TSU, set_threads, write_atomic, write_data, write_json  # noqa: E402

#: (key, target, "le"/"ge", description)
TARGETS = [
    ("kd_cached_over_plain", 1.15, "le", "KD step reading the teacher cache / plain RGB step"),
    ("kd_live_over_floor", 1.05, "le", "live-teacher KD step / plain step, over its FLOP floor (student step + "
     "teacher forward) / student step"),
    ("h5_over_npy", 2.0, "ge", "HDF5 loader videos/s / .npy loader videos/s (fp32 both, same collate)"),
    ("h5_over_npy_read", 2.0, "ge", "HDF5 reading alone / .npy reading alone, videos/s (fp32)"),
    ("loader_over_raw", 0.5, "ge", "HDF5 loader MB/s / raw read MB/s of the same file (fp32)"),
    ("cli_help_seconds", 2.0, "le", "wall seconds of `kd-detect --help`"),
    ("cli_check_seconds", 2.5, "le", "wall seconds of `kd-detect check small.h5`"),
    ("global_kl_extra_mb_T16384", 64.0, "le", "L_global (kl) peak extra MiB, fwd+bwd, T=16384"),
    ("global_gram_extra_mb_T16384", 64.0, "le", "L_global (gram) peak extra MiB, fwd+bwd, T=16384"),
    ("bf16_all_finite", True, "eq", "every plugin finite under bf16 autocast"),
]


TRANSPORT_LABELS = {"fresh_0": "new tensors in-process", "fresh_1": "new tensors from 1 worker",
                    "reused_1": "the same shared tensors from 1 worker"}


def sizes(quick: bool) -> dict[str, Any]:
    """Problem sizes and repeats of the full and the quick run."""
    if quick:
        return dict(charades_videos=64, tsu_videos=8, load_batch=32, tsu_batch=8, load_repeats=9,
                    distill_batch=8, distill_batches=2, distill_repeats=7, infer_repeats=3,
                    seq_steps=[1024, 8192, 16384], seq_repeats=1, matmul_n=1024, worker_repeats=5, cli_repeats=1,
                    event_videos=8, event_repeats=3)
    return dict(charades_videos=256, tsu_videos=32, load_batch=32, tsu_batch=8, load_repeats=7,
                distill_batch=32, distill_batches=2, distill_repeats=7, infer_repeats=5,
                seq_steps=[256, 512, 1024, 2048, 4096, 8192, 16384], seq_repeats=3, matmul_n=2048,
                worker_repeats=5, cli_repeats=3, event_videos=32, event_repeats=5)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the selected sections; returns the full result dict (headline keys on top)."""
    from benchmarks.cli import bench_cli
    from benchmarks.events import bench_events
    from benchmarks.loading import bench_loading, bench_workers
    from benchmarks.seqloss import bench_seq_losses
    from benchmarks.training import batches_of, bench_bf16, bench_distill, bench_inference

    set_threads(args.threads)
    cfg = sizes(args.quick)
    sections = set(args.sections)
    res: dict[str, Any] = {}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kd_bench_", dir=args.tmp) as tmp:
        root = Path(tmp)
        if "loading" in sections:
            log("loading: writing Charades-like and TSU-like data")
            charades = write_data(CHARADES.scaled(cfg["charades_videos"]), root / "charades")
            tsu = write_data(TSU.scaled(cfg["tsu_videos"]), root / "tsu")
            log("loading: Charades-like")
            res["loading"] = {"charades": bench_loading(charades, cfg["load_batch"], args.workers, cfg["load_repeats"],
                                                        device=args.device)}
            log("loading: TSU-like")
            res["loading"]["tsu"] = bench_loading(tsu, cfg["tsu_batch"], args.workers, cfg["load_repeats"],
                                                  device=args.device)
            log("loading: workers 0/1/2 (Charades-like, float16)")
            res["workers"] = bench_workers(charades, cfg["load_batch"], cfg["worker_repeats"])
        if sections & {"distill", "inference"}:
            n = cfg["distill_batch"] * cfg["distill_batches"]
            small = write_data(CHARADES.scaled(n), root / "distill", dtypes=("float16",), seed=1)
            dm, batches = batches_of(small, cfg["distill_batch"], cfg["distill_batches"], device=args.device)
            if "distill" in sections:
                log(f"distillation overhead: B={cfg['distill_batch']}, {cfg['distill_repeats']} interleaved repeats")
                res["distill"] = bench_distill(dm, batches, root / "distill", cfg["distill_repeats"], cfg["matmul_n"],
                                               device=args.device, amp=amp_dtype(args.device))
            if "inference" in sections:
                log("inference")
                res["inference"] = bench_inference(dm, batches, cfg["infer_repeats"], device=args.device)
        if "seqloss" in sections:
            log(f"sequence losses: T={cfg['seq_steps']}, F={args.seq_dim}")
            res["seq_losses"] = bench_seq_losses(cfg["seq_steps"], args.seq_dim, cfg["seq_repeats"], args.threads)
        if "bf16" in sections:
            log("bf16 autocast")
            res["bf16"] = bench_bf16()
        if "cli" in sections:
            log(f"command line: {cfg['cli_repeats']} run(s) after a warm-up")
            res["cli"] = bench_cli(root, cfg["cli_repeats"])
    if "events" in sections:
        log(f"event threshold search: {cfg['event_videos']} TSU-like videos")
        res["events"] = bench_events(cfg["event_videos"], cfg["event_repeats"], TSU)
    res["wall_seconds"] = time.perf_counter() - t_start
    return res


def headline(res: dict[str, Any]) -> dict[str, Any]:
    """The top-level numbers (``None`` for a section that was not run)."""
    d, ld, sq, inf = res.get("distill"), res.get("loading"), res.get("seq_losses"), res.get("inference")
    wk, cli = res.get("workers"), res.get("cli")
    ch = ld["charades"] if ld else None

    def seq(name: str) -> float | None:
        if not sq or name not in sq["losses"]:
            return None
        pts = sq["losses"][name]["points"]
        return pts[max(pts)]["extra_mb"] if 16384 in pts else None

    return {
        "kd_cached_over_plain": d["over_plain"]["kd_cached"] if d else None,
        "kd_live_over_plain": d["over_plain"]["kd_live"] if d else None,
        "kd_live_over_floor": d["kd_live_over_floor"] if d else None,
        "live_flop_floor_over_plain": d["live_flop_floor_over_plain"] if d else None,
        "kd_live_over_parts": d["kd_live_over_parts"] if d else None,
        "h5_over_npy": ch["h5_over_npy"] if ch else None,
        "h5_over_npy_read": ch["h5_read_over_npy_read"] if ch else None,
        "h5_over_npy_fp16": ch["h5_over_npy_fp16"] if ch else None,
        "h5_fp16_over_h5_fp32": ch["h5_fp16_over_h5_fp32"] if ch else None,
        "h5_model_over_npy": ch["h5_model_over_npy"] if ch else None,
        "loader_over_raw": ch["loader_over_raw"] if ch else None,
        "loader_over_raw_fp16": ch["loader_over_raw_fp16"] if ch else None,
        "loader_floor_over_raw": ch["floor_over_raw"] if ch else None,
        "loader_over_floor": ch["loader_over_floor"] if ch else None,
        "workers_videos_per_s": wk["videos_per_s"] if wk else None,
        "cli_help_seconds": cli["commands"]["help"]["seconds"] if cli else None,
        "cli_check_seconds": cli["commands"]["check"]["seconds"] if cli else None,
        "global_kl_extra_mb_T16384": seq("global_kl"),
        "global_gram_extra_mb_T16384": seq("global_gram"),
        "student_steps_per_s": inf["b1_steps_per_s"] if inf else None,
        "pdan_flops_over_matmul": d["pdan_flops_over_matmul"] if d else None,
        "bf16_all_finite": all(v["finite"] for v in res["bf16"].values()) if "bf16" in res else None,
        "event_search_over_one_cut": res["events"]["search_over_one_cut"] if "events" in res else None,
    }


def check_targets(head: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, target, op, what in TARGETS:
        value = head.get(key)
        if value is None:
            met = None
        elif op == "le":
            met = value <= target
        elif op == "ge":
            met = value >= target
        else:
            met = value == target
        out.append({"key": key, "value": value, "target": target, "op": op, "met": met, "what": what})
    return out


# ----------------------------------------------------------------------------- report
def _f(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return str(x)


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    meta, head, res = report["meta"], report["headline"], report["results"]
    sym = {"le": "≤", "ge": "≥", "eq": "="}
    lines = [
        "# kd_detect performance report",
        "",
        f"`{meta['command']}` — {meta['date']}, {'QUICK, ' if meta['quick'] else ''}threads={meta['threads']}, "
        f"device {meta.get('device', 'cpu')} (amp {meta.get('amp')}), torch {meta['torch']}, CPU: {meta['cpu']} ({meta['cpus']} logical), commit {meta['commit'][:10]}, "  # noqa: E501
        f"{meta['wall_seconds']:.0f} s.",
        "",
        "Ratios compare variants timed interleaved in one process (median of the repeats).",
        "",
        "## Targets",
        "",
        "| figure | measured | target | met |",
        "|---|---:|---:|:---:|",
    ]
    for t in report["targets"]:
        lines.append(f"| {t['what']} (`{t['key']}`) | {_f(t['value'])} | {sym[t['op']]} {_f(t['target'])} | "
                     f"{_f(t['met'])} |")
    lines += ["", "Other headline numbers: " + ", ".join(
        f"`{k}` = {_f(v)}" for k, v in head.items() if k not in {t['key'] for t in report['targets']}), ""]
    if "loading" in res:
        lines += ["## 1. Data loading", ""]
        for name, ld in res["loading"].items():
            lines += [f"**{name}-like**: {ld['videos']} videos, batch {ld['batch_size']}, workers {ld['workers']}, "
                      f"{ld['repeats']} epochs each (page cache warm).", "",
                      "| variant | videos/s | MB/s | epoch s |", "|---|---:|---:|---:|"]
            for key, v in ld["variants"].items():
                lines.append(f"| {key} | {v['videos_per_s']:,.0f} | {v['mb_per_s']:,.0f} | {v['seconds_per_epoch']:.3f} |")
            lines += ["", "ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ld.items()
                                                  if isinstance(v, float)), ""]
            if "floor_over_raw" in ld:
                lines += [f"Floor: the loader's own copies of an epoch (same rows, into the same kind of batch "
                          f"memory, padding zeroed, no Python per item) run at {ld['floor_over_raw']:.2f} of the "
                          f"raw read (fp32); the loader reaches {ld['loader_over_floor']:.2f} of that floor. What "
                          "separates them is the collate and torch's DataLoader per batch (docs/performance.md).",
                          ""]
    if "workers" in res:
        w = res["workers"]
        lines += [f"**workers** (Charades-like, {w['dtype']}, batch {w['batch_size']}, {w['cpus']} logical CPUs): "
                  + ", ".join(f"{k}: {v:,.0f} videos/s (×{w['speedup_over_0'][k]:.2f})"
                              for k, v in w["videos_per_s"].items())
                  + "; handing over batches of the same shapes without reading them: "
                  + ", ".join(f"{TRANSPORT_LABELS.get(k, k)} {v:,.0f} videos/s"
                              for k, v in w["transport_videos_per_s"].items()), ""]
    if "distill" in res:
        d = res["distill"]
        lines += ["## 2. Distillation overhead (training step)", "",
                  f"Batch {d['batch_size']} Charades-like videos (padded T {d['padded_steps']}), {d['student']}; "
                  f"teacher {d['teacher']}; forward + backward + Adam step, {d['repeats']} interleaved repeats.", "",
                  "| variant | s/step | × plain |", "|---|---:|---:|"]
        for key, sec in d["seconds"].items():
            if key == "dense_matmul":
                continue
            lines.append(f"| {key} | {sec:.3f} | {d['over_plain'][key]:.3f} |")
        lines += ["", f"Frozen teacher forward alone: {d['teacher_forward_over_plain_step']:.2f} × the plain step; "
                  f"it is {d['teacher_forward_gflop']:.1f} GFLOP vs {d['plain_step_gflop']:.1f} GFLOP for the "
                  f"plain step, so at equal FLOP/s the live path costs ≥ {d['live_flop_floor_over_plain']:.2f} × plain; "
                  f"measured {d['over_plain']['kd_live']:.2f} → **{d['kd_live_over_floor']:.2f} × the floor**. "
                  f"Its parts, measured: cached KD step (student + plugins) {d['over_plain']['kd_cached']:.2f} + "
                  f"teacher forward {d['teacher_forward_over_plain_step']:.2f} = {d['kd_live_parts_over_plain']:.2f} "
                  f"(live step ÷ its parts: {d['kd_live_over_parts']:.3f}); "
                  f"the teacher forward runs at {d['teacher_gflops_per_s_over_plain']:.2f} × the plain step's FLOP/s.",
                  ""]
        lines += ["## 5. Compute efficiency", "",
                  f"PDAN training step: {d['plain_step_gflop']:.1f} GFLOP (FlopCounterMode) → "
                  f"{d['pdan_gflops_per_s']:.1f} GFLOP/s; dense fp32 matmul n={d['matmul_n']}: "
                  f"{d['matmul_gflops_per_s']:.1f} GFLOP/s → ratio **{d['pdan_flops_over_matmul']:.2f}**.", ""]
    if "seq_losses" in res:
        sq = res["seq_losses"]
        steps = sq["steps"]
        lines += ["## 3. Sequence-loss scaling (one video, forward + backward)", "",
                  f"F = {sq['dim']}, all steps valid, {sq['repeats']} repeat(s); peak extra memory from VmHWM "
                  "in a fresh process (MALLOC_MMAP_THRESHOLD_=65536).", "",
                  "| loss | " + " | ".join(f"T={t}" for t in steps) + " | MiB per 1k steps | mem(Tmax)/mem(Tmax/2) |",
                  "|---|" + "---:|" * (len(steps) + 2)]
        for name, v in sq["losses"].items():
            cells = [f"{v['points'][t]['seconds']:.3f} s / {v['points'][t]['extra_mb']:.1f} MiB" for t in steps]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_f(v.get('mb_per_1k_steps'))} | "
                         f"{_f(v.get('mem_ratio_Tmax_over_half'))} |")
        lines.append("")
    if "inference" in res:
        i = res["inference"]
        lines += ["## 4. Inference (RGB PDAN, eval, no_grad)", "",
                  f"batch 1 (T={i['b1_timesteps']}): {i['b1_steps_per_s']:.1f} forwards/s "
                  f"({i['b1_feature_steps_per_s']:,.0f} feature steps/s); batch {i['batched_size']}: "
                  f"{i['batched_steps_per_s']:.2f} forwards/s = {i['batched_videos_per_s']:.1f} videos/s "
                  f"({i['batched_feature_steps_per_s']:,.0f} feature steps/s).", ""]
    if "bf16" in res:
        lines += ["## 6. bf16 autocast (forward + backward of each plugin)", "",
                  "| plugin | finite | loss |", "|---|:---:|---:|"]
        for name, v in res["bf16"].items():
            lines.append(f"| {name} | {_f(v['finite'])} | {v['loss']:.4f} |")
        lines.append("")
    if "cli" in res:
        lines += ["## 7. Command line (fresh process each, page cache warm)", "",
                  "| command | exit | wall s |", "|---|---:|---:|"]
        for v in res["cli"]["commands"].values():
            lines.append(f"| `{v['argv']}` | {v['exit_code']} | {_f(v['seconds'])} |")
        lines.append("")
    if "events" in res:
        e = res["events"]
        lines += ["## 8. Event threshold search (validation cost of `event_threshold: auto`)", "",
                  f"{e['videos']} TSU-like videos, {e['repeats']} interleaved repeats: event mAP at one cut "
                  f"{e['one_cut_ms_per_video']:.1f} ms per video, at the {len(e['cuts'])} cuts of the search "
                  f"{e['search_ms_per_video']:.1f} ms per video (**× {e['search_over_one_cut']:.1f}**). Segments "
                  "per video by cut: " + ", ".join(f"{t:g}: {n:.0f}" for t, n in e["segments_per_video"].items()),
                  ""]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _meta(args: argparse.Namespace, argv: list[str], wall: float) -> dict[str, Any]:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "command": " ".join(["python benchmarks/bench.py", *(shlex.quote(a) for a in argv)]),
        "date": _dt.datetime.now().isoformat(timespec="seconds"), "quick": args.quick, "threads": args.threads,
        "workers": args.workers, "device": args.device, "amp": str(amp_dtype(args.device)), "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,  # noqa: E501
        "cpus": os.cpu_count(), "commit": commit or "unknown", "wall_seconds": wall, "sizes": sizes(args.quick),
        "seq_dim": args.seq_dim,
    }


SECTIONS = ("loading", "distill", "inference", "seqloss", "bf16", "cli", "events")


def amp_dtype(device: str) -> Any:
    """The mixed-precision dtype of the training steps: bf16 on a GPU that has it, else
    fp16 on a GPU; ``None`` (fp32) on the CPU, as ``make train`` runs there."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced sizes and repeats (same keys), ~2-3 min")
    parser.add_argument("--threads", type=int, default=1, help="torch/OpenMP threads (recorded; default 1)")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the loading section")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (GPU-only figures; bf16-mixed steps)")
    parser.add_argument("--seq-dim", type=int, default=64, help="channels F of the sequence-loss scaling")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench", help="report directory")
    parser.add_argument("--tmp", type=Path, default=None, help="where to write the generated data (default: $TMPDIR)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print(f"bench: --device {args.device} asked but no CUDA GPU is visible (torch {torch.__version__}); "
                  "nothing run", flush=True)
            return 0
    os.environ.setdefault("WANDB_MODE", "disabled")
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step called without a Trainer
    results = run(args)
    head = headline(results)
    report = {**head, "headline": head, "targets": check_targets(head),
              "meta": _meta(args, argv, results.pop("wall_seconds")), "results": results}
    out = Path(args.out)
    write_json(out / "report.json", report)
    write_atomic(out / "report.md", markdown(report) + "\n")
    log(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    for t in report["targets"]:
        log(f"  {t['key']}: {_f(t['value'])} (target {t['op']} {_f(t['target'])}) met={_f(t['met'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
