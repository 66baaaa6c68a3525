"""``python -m kd_detect.lab.pair A B``: one row of runs against another, paired by seed.

``make compare`` pairs every row with RGB-only and with ours *inside one output directory*.
A change measured in a directory of its own -- another weight (``--out runs/lambda0.3
--reference runs/compare``), another data file, more unlabelled videos -- is judged against
the row it changes, which lives elsewhere. This command pairs the two::

    python -m kd_detect.lab.pair runs/lambda0.3:synthetic_kd runs/compare
    python -m kd_detect.lab.pair runs/u864:ablations/synthetic_kd_plus_logit_kd_unlabelled runs/u432

Each side is ``DIR[:EXPERIMENT]``: a comparison directory whose seed ``s`` run is
``DIR/seed<s>/EXPERIMENT`` (what ``make compare`` writes); a side without an experiment
takes the other side's. Only finished runs count (``metrics.json``), on the seeds both sides
have. Printed, per seed and then over the seeds: A, B and ``A − B`` on test (``--metric``,
default ``test/frame_map``) and on validation (the figure each run's checkpoint was chosen
on, ``val/frame_map``); the mean difference with its 95 % Student-t interval
``mean ± t_{0.975, n−1} s / √n`` (:func:`kd_detect.lab.compare.paired_difference`) and on how
many seeds A is above. ``--json FILE`` writes the same figures (atomically).

Two runs of one seed are a pair only when their training videos came in the same order
(``data.seed``, or the fit's seed: :func:`kd_detect.runs.training_order_seed`); a seed whose
two runs differ stops the command with one line naming both, as do the same runs on both
sides, a side with no finished run, two sides with no seed in common, and a metric that is
missing from a run's ``metrics.json`` or not a number there (the file and the key named).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from kd_detect.errors import KdDetectError, UsageError
from kd_detect.io import atomic_write
from kd_detect.lab.compare import METRIC, SELECTION, paired_difference
from kd_detect.runs import RunDir, training_order_seed


@dataclass(frozen=True)
class Side:
    """One side of a pair: the runs ``root/seed<s>/experiment``."""

    root: Path
    experiment: str

    @property
    def name(self) -> str:
        return f"{self.root}:{self.experiment}"

    def runs(self) -> dict[int, RunDir]:
        """The finished runs, by seed."""
        found = {}
        for seed_dir in sorted(self.root.glob("seed*")):
            suffix = seed_dir.name[len("seed"):]
            run = RunDir(seed_dir / self.experiment)
            if suffix.isdigit() and (run.path / "metrics.json").is_file():
                found[int(suffix)] = run
        return found


def parse_sides(a: str, b: str) -> tuple[Side, Side]:
    """``DIR[:EXPERIMENT]`` twice; a side without an experiment takes the other's."""
    def split(spec: str) -> tuple[Path, str | None]:
        root, sep, exp = spec.rpartition(":") if ":" in spec else (spec, "", "")
        return Path(root), (exp.strip("/") or None) if sep else None

    (ra, ea), (rb, eb) = split(a), split(b)
    if ea is None and eb is None:
        raise UsageError(f"{a} and {b}: name the experiment on at least one side, e.g. {a}:synthetic_kd")
    return Side(ra, ea or eb), Side(rb, eb or ea)


def pair(a: Side, b: Side, metric: str = METRIC) -> dict:
    """The paired comparison of ``a`` against ``b`` (see the module docstring)."""
    if a.root.resolve() == b.root.resolve() and a.experiment == b.experiment:
        raise UsageError(f"{a.name} and {b.name}: the same runs on both sides")
    runs = {}
    for side in (a, b):
        if not side.root.is_dir():
            raise UsageError(f"{side.root}: comparison directory not found")
        runs[side] = side.runs()
        if not runs[side]:
            raise UsageError(f"{side.name}: no finished run ({side.root}/seed<s>/{side.experiment}/metrics.json)")
    seeds = sorted(set(runs[a]) & set(runs[b]))
    if not seeds:
        raise UsageError(f"{a.name} (seeds {sorted(runs[a])}) and {b.name} (seeds {sorted(runs[b])}): no seed in common")
    test: dict[Side, dict[int, float]] = {a: {}, b: {}}
    val: dict[Side, dict[int, float]] = {a: {}, b: {}}
    for seed in seeds:
        ra, rb = runs[a][seed], runs[b][seed]
        oa, ob = training_order_seed(ra.config()), training_order_seed(rb.config())
        if oa is not None and ob is not None and oa != ob:
            raise UsageError(f"seed {seed}: {ra.path} trained on its videos in the order of seed {oa}, "
                             f"{rb.path} in that of seed {ob}: not a pair")
        for side, run in ((a, ra), (b, rb)):
            metrics = run.metrics() or {}
            if metric not in metrics:
                raise UsageError(f"{run.path / 'metrics.json'}: no {metric!r} (it has {', '.join(sorted(metrics))})")
            value = metrics[metric]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"{run.path / 'metrics.json'}: {metric!r}: expected a number, got {value!r}")
            test[side][seed] = float(value)
            score = run.selection_score(SELECTION)
            if score is not None:
                val[side][seed] = score
    per_seed = [{"seed": s, "a": test[a][s], "b": test[b][s], "val_a": val[a].get(s), "val_b": val[b].get(s)}
                for s in seeds]
    return {"a": a.name, "b": b.name, "metric": metric, "seeds": seeds, "per_seed": per_seed,
            "test": paired_difference(test[a], test[b]), "validation": paired_difference(val[a], val[b])}


def _pct(x: float | None, sign: bool = False) -> str:
    return "" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def _summary(d: dict | None) -> str:
    if d is None:
        return ""
    ci = f" [{_pct(d['ci95'][0], True)}, {_pct(d['ci95'][1], True)}]" if d["ci95"] else ""
    return f"{_pct(d['mean'], True)}{ci}, {d['above']}/{d['runs']}"


def markdown(result: dict) -> str:
    """The comparison as a table: one line per seed, then the paired summary."""
    lines = [f"A = {result['a']}", f"B = {result['b']}", "",
             f"| seed | A: {result['metric']} | B | A − B | A: {SELECTION} | B | A − B |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["per_seed"]:
        dv = r["val_a"] - r["val_b"] if r["val_a"] is not None and r["val_b"] is not None else None
        lines.append(f"| {r['seed']} | {_pct(r['a'])} | {_pct(r['b'])} | {_pct(r['a'] - r['b'], True)} "
                     f"| {_pct(r['val_a'])} | {_pct(r['val_b'])} | {_pct(dv, True)} |")
    mean = lambda key: sum(r[key] for r in result["per_seed"]) / len(result["per_seed"])  # noqa: E731
    va = [r["val_a"] for r in result["per_seed"] if r["val_a"] is not None]
    vb = [r["val_b"] for r in result["per_seed"] if r["val_b"] is not None]
    lines.append(f"| mean | {_pct(mean('a'))} | {_pct(mean('b'))} | {_summary(result['test'])} "
                 f"| {_pct(sum(va) / len(va)) if va else ''} | {_pct(sum(vb) / len(vb)) if vb else ''} "
                 f"| {_summary(result['validation'])} |")
    lines += ["", "A − B: mean over the seeds, 95 % t interval, seeds on which A is above."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_detect.lab.pair", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("a", help="DIR[:EXPERIMENT]: runs DIR/seed<s>/EXPERIMENT")
    parser.add_argument("b", help="DIR[:EXPERIMENT] (the experiment defaults to A's)")
    parser.add_argument("--metric", default=METRIC, help="the test figure of metrics.json to pair")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        a, b = parse_sides(args.a, args.b)
        result = pair(a, b, args.metric)
        if args.json is not None:
            inputs = [run.path / "metrics.json" for side in (a, b) for run in side.runs().values()]
            with atomic_write(args.json, inputs=inputs) as tmp:
                tmp.write_text(json.dumps(result, indent=2) + "\n")
    except KdDetectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(markdown(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
