"""The run directory ``runs/<EXP>/`` written by ``make train``, read by everything else.

Layout (DESIGN.md §7)::

    runs/<EXP>/best.ckpt        best val/frame_map (RunCheckpoint)
    runs/<EXP>/last.ckpt        latest epoch (what RESUME=1 continues)
    runs/<EXP>/config.yaml      the resolved config (RunConfigSaver)
    runs/<EXP>/run.json         what the run was trained on: the data file's identity
                                (kd_detect.io.file_identity), written when the fit starts
                                (kd_detect.apps.lightning.write_run_record)
    runs/<EXP>/metrics.json     test figures, and the validation figure the tested
                                checkpoint was chosen on (RunReport)
    runs/<EXP>/logs/            the logger's files (CSVLogger: logs/**/metrics.csv)
    runs/<EXP>/plots/           pictures (kd-detect plot)

:class:`RunDir` is the one place that knows these names. Paths inside a config are read
as given (relative to the working directory) or, failing that, relative to the folder that
holds ``runs/`` (so a run can be read from another working directory).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_detect.errors import UsageError

CHECKPOINTS = ("best.ckpt", "last.ckpt")
CONFIG = "config.yaml"
METRICS = "metrics.json"
RECORD = "run.json"


def section(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """``cfg[name]``'s arguments: its ``init_args`` when it is a ``class_path`` entry."""
    sec = cfg.get(name) or {}
    if isinstance(sec, dict) and isinstance(sec.get("init_args"), dict):
        return sec["init_args"]
    return sec if isinstance(sec, dict) else {}


def training_order_seed(cfg: dict[str, Any]) -> int | None:
    """The seed of the order of a fit's training videos, from its (resolved) config:
    ``data.seed``, or when unset the fit's ``seed_everything``, which it then follows
    (``kd_detect.data.feature_data``); ``None`` when that is not a fixed integer (an unseeded
    fit). Runs before 2026-12-07 recorded ``data.seed: 0`` whatever their seed."""
    seed = section(cfg, "data").get("seed")
    if seed is None:
        seed = cfg.get("seed_everything")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else None


@dataclass(frozen=True)
class RunDir:
    """One run directory (it need not exist yet: :meth:`checkpoint` says so when needed)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def has_checkpoint(self) -> bool:
        return any((self.path / n).is_file() for n in CHECKPOINTS)

    def checkpoint(self) -> Path:
        """``best.ckpt`` (``last.ckpt`` when there is no best)."""
        if not self.path.is_dir():
            raise UsageError(f"{self.path}: run directory not found (runs are written by `make train` to runs/<EXP>/)")
        for name in CHECKPOINTS:
            if (self.path / name).is_file():
                return self.path / name
        raise UsageError(f"{self.path}: no best.ckpt or last.ckpt in the run directory (did training finish?)")

    def config(self) -> dict[str, Any]:
        """The resolved config (``config.yaml``), ``{}`` when absent."""
        import yaml

        path = self.path / CONFIG
        if not path.is_file():
            return {}
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise UsageError(f"{path}: invalid YAML ({err})") from None
        return cfg if isinstance(cfg, dict) else {}

    def metrics(self) -> dict[str, Any] | None:
        """The test figures (``metrics.json``), ``None`` when the run has none yet."""
        path = self.path / METRICS
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: invalid JSON ({err})") from None

    def selection_score(self, monitor: str = "val/frame_map") -> float | None:
        """The ``monitor`` figure (higher is better) the tested checkpoint was chosen on:
        ``metrics.json``'s ``selection``, else the best value of that column in the run's
        CSV log (runs tested before ``metrics.json`` recorded it); ``None`` when neither has it."""
        selection = (self.metrics() or {}).get("selection")
        if isinstance(selection, dict) and selection.get("monitor") == monitor:
            return float(selection["score"])
        best = None
        for log in sorted((self.path / "logs").rglob("metrics.csv")):
            with open(log, newline="") as fh:
                for line, row in enumerate(csv.DictReader(fh), start=2):
                    value = row.get(monitor)
                    if not value:
                        continue
                    try:
                        best = max(float(value), best) if best is not None else float(value)
                    except ValueError:
                        raise UsageError(f"{log}: line {line}, column {monitor}: expected a number, got {value!r}") from None
        return best

    def record(self) -> dict[str, Any] | None:
        """What the run recorded when its fit started (``run.json``), ``None`` when absent
        (a run trained before runs recorded their data)."""
        path = self.path / RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise UsageError(f"{path}: invalid JSON ({err})") from None
        return record if isinstance(record, dict) else None

    def finished(self) -> bool:
        """The last fit ended with a test (``metrics.json`` written after ``run.json``)."""
        metrics, record = self.path / METRICS, self.path / RECORD
        if not metrics.is_file():
            return False
        return not record.is_file() or metrics.stat().st_mtime_ns >= record.stat().st_mtime_ns

    def resolve(self, path: str | Path) -> Path:
        """A path named in this run's config (see the module docstring)."""
        p = Path(path)
        if p.is_absolute() or p.exists():
            return p
        root = self.path.resolve().parent.parent
        return root / p if (root / p).exists() else p

    def data_path(self) -> Path | None:
        """The config's ``data.path``, resolved; ``None`` when it names none."""
        data = section(self.config(), "data").get("path")
        return self.resolve(data) if data else None

    def rgb_sibling(self) -> RunDir | None:
        """The sibling RGB-only run: ``<prefix>_rgb`` for the longest ``_``-prefix of the run
        name that has one (``synthetic_kd`` → ``synthetic_rgb``, ``pku_mmd_kd`` → ``pku_mmd_rgb``)."""
        parts = self.name.split("_")
        for n in range(len(parts), 0, -1):
            candidate = self.path.parent / ("_".join(parts[:n]) + "_rgb")
            if candidate.resolve() != self.path.resolve() and candidate.is_dir():
                return RunDir(candidate)
        return None

    @staticmethod
    def of_checkpoint(ckpt: str | Path) -> RunDir:
        """The run a checkpoint file belongs to (its folder)."""
        return RunDir(Path(ckpt).parent)
