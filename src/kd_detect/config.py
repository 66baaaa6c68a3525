"""Experiment config composition (DESIGN.md §7).

An experiment YAML may name parents in a top-level ``config:`` key (a path or a list,
relative to the file). The chain is merged parents-first, mappings recursively (a child
``distill: {global: {init_args: {weight: 0}}}`` changes one weight and keeps the
parent's ``class_path``), anything else replaced (lists such as ``callbacks`` included).
The CLI hands the merged result to jsonargparse as one ``--config``. The ``--config``
files of one command line merge the same way, in their order, as if one file listed them in
``config:`` (``--config charades_kd.yaml --config my_losses.yaml`` adds ``my_losses``'
``distill`` entries to the experiment's; jsonargparse alone would replace the whole
``distill`` mapping). Their merge stands where the first of them stood, so every
``--key=value`` override applies on top of all the files, wherever it is written:
``make train`` puts its own overrides between the experiment's file and those of ``ARGS``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kd_detect.errors import ConfigError

__all__ = ["ConfigError", "config_files", "expand_config_includes", "load_config", "merge"]

INCLUDE_KEY = "config"


def load_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged content of ``path`` and its includes."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"config include cycle: {' -> '.join(map(str, _seen + (path,)))}")
    if not path.is_file():
        raise ConfigError(f"experiment config {path} not found (experiments are experiments/<name>.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    includes = raw.pop(INCLUDE_KEY, None)
    merged: dict[str, Any] = {}
    for inc in [includes] if isinstance(includes, str) else list(includes or []):
        merge(merged, load_config(path.parent / inc, _seen + (path,)))
    merge(merged, raw)
    return merged


def merge(into: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """Recursive in-place merge of mappings; ``other`` wins."""
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def has_includes(path: str | Path) -> bool:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and INCLUDE_KEY in raw


def _yaml_file(value: str) -> bool:
    return Path(value).suffix in (".yaml", ".yml") and Path(value).is_file()


#: LightningCLI's subcommands: the ``--config`` files before one and after it configure
#: different parsers, so they are merged separately
SUBCOMMANDS = ("fit", "validate", "test", "predict")


def config_files(argv: list[str]) -> list[str]:
    """The values of the ``--config FILE`` arguments of ``argv`` that name YAML files, in order."""
    return [value for _, value, _ in _config_args(argv) if _yaml_file(value)]


def _config_args(argv: list[str]):
    """``(start, value, stop)`` of every ``--config VALUE`` / ``--config=VALUE`` in ``argv``."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            yield i, argv[i + 1], i + 2
            i += 2
        elif arg.startswith("--config="):
            yield i, arg.split("=", 1)[1], i + 1
            i += 1
        else:
            i += 1


def expand_config_includes(argv: list[str]) -> list[str]:
    """``argv`` with its ``--config FILE`` arguments replaced by one ``--config`` of their
    merge (:func:`merge`, includes resolved, later files winning), standing where the first
    of them stood; a single file without includes is left as written. YAML strings
    (``--config '{...}'``) pass through in place, and the files before a subcommand
    (:data:`SUBCOMMANDS`) are merged apart from those after it."""
    out: list[str] = []
    start = 0
    for i, arg in enumerate(argv):
        if arg in SUBCOMMANDS and not (i and argv[i - 1].startswith("--") and "=" not in argv[i - 1]):
            out += _merge_level(argv[start:i]) + [arg]
            start = i + 1
    return out + _merge_level(argv[start:])


def _merge_level(argv: list[str]) -> list[str]:
    spans = [(a, v, b) for a, v, b in _config_args(argv) if _yaml_file(v)]
    if not spans or (len(spans) == 1 and not has_includes(spans[0][1])):
        return list(argv)
    merged: dict[str, Any] = {}
    for _, value, _ in spans:
        merge(merged, load_config(value))
    out, i = [], 0
    for n, (a, _, b) in enumerate(spans):
        out += argv[i:a]
        if n == 0:
            out += ["--config", yaml.safe_dump(merged, sort_keys=False)]
        i = b
    return out + argv[i:]


#: a segment threshold setting meaning "the one chosen on the validation videos"
#: (``event_threshold: auto`` of the detector modules, ``kd-detect predict --threshold auto``)
AUTO = "auto"


def threshold_setting(value: Any) -> float | str:
    """A segment threshold setting: :data:`AUTO`, or a probability in [0, 1] (as a float).
    Raises ``ValueError`` ("must be a probability in [0, 1] or 'auto', got ...") otherwise.
    Here, not in ``kd_detect.metrics``, so that reading it imports no torchmetrics
    (``kd-detect predict`` of an export runs on torch alone)."""
    if value == AUTO:
        return AUTO
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        threshold = float("nan")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"must be a probability in [0, 1] or {AUTO!r}, got {value!r}")
    return threshold
