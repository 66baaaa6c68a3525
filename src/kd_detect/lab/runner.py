"""Helpers behind ``make train`` / ``make compare`` (not part of the library API).

``python -m kd_detect.lab.runner deps EXP [ARGS...]`` prints what experiment ``EXP`` needs on
disk before it can run -- its data file and the teacher checkpoints it names -- so the
Makefile can build them first (data generated, teachers trained by their own experiment,
found from ``runs/<teacher exp>/best.ckpt``).

``python -m kd_detect.lab.runner table EXP...`` prints the test figures of finished runs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from kd_detect.config import load_config
from kd_detect.errors import KdDetectError
from kd_detect.runs import RunDir, section

EXPERIMENTS = Path("experiments")
RUNS = Path("runs")


def _overrides(args: list[str]) -> dict[str, str]:
    out = {}
    tokens = [t for a in args for t in shlex.split(a)]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--") and "=" in tok:
            key, value = tok[2:].split("=", 1)
            out[key] = value
        elif tok.startswith("--") and i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[tok[2:]] = tokens[i + 1]
            i += 1
        i += 1
    return out


def dependencies(exp: str, args: list[str]) -> list[str]:
    """Files experiment ``exp`` needs: its data file, then its teachers' checkpoints."""
    cfg = load_config(EXPERIMENTS / f"{exp}.yaml")
    over = _overrides(args)
    data_path = over.get("data.path") or over.get("data.init_args.path") or section(cfg, "data").get("path")
    deps = [str(data_path)] if data_path else []
    model = section(cfg, "model")
    teachers = dict(model.get("teachers") or {})
    for key, value in over.items():
        for prefix in ("model.init_args.teachers.", "model.teachers."):
            if key.startswith(prefix):
                teachers[key[len(prefix):]] = value
    deps.extend(str(p) for p in teachers.values())
    return deps


def teacher_args(args: list[str]) -> str:
    """The part of a student's ARGS that also applies to training its teacher: data,
    trainer and seed overrides (a student-only key would break the teacher's CLI)."""
    keep = ("--data.", "--trainer.", "--seed_everything")
    tokens = [t for a in args for t in shlex.split(a)]
    out: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        has_value = "=" not in tok and i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        group = [tok, tokens[i + 1]] if has_value else [tok]
        if tok.startswith(keep):
            out.extend(group)
        i += len(group)
    return shlex.join(out)


def table(exps: list[str]) -> str:
    rows = []
    for exp in exps:
        m = RunDir(RUNS / exp).metrics()
        if m is None:
            rows.append((exp, None, None))
            continue
        rows.append((exp, m.get("test/frame_map"), m.get("test/charades_map")))
    lines = ["| run | test frame mAP | test Charades mAP |", "|---|---:|---:|"]
    for exp, fmap, cmap in rows:
        fmt = lambda v: "missing" if v is None else f"{100 * v:.2f}"  # noqa: E731
        lines.append(f"| {exp} | {fmt(fmap)} | {fmt(cmap)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "deps":
            print(" ".join(dependencies(rest[0], rest[1:])))
        elif cmd == "teacher-args":
            print(teacher_args(rest))
        elif cmd == "table":
            print(table(rest))
        else:
            print(f"unknown runner command {cmd!r}", file=sys.stderr)
            return 2
    except KdDetectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
