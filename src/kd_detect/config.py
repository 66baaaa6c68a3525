"""Experiment config composition (DESIGN.md §7).

An experiment YAML may name parents in a top-level ``config:`` key (a path or a list,
relative to the file). The chain is merged parents-first, mappings recursively (a child
``distill: {global: {init_args: {weight: 0}}}`` changes one weight and keeps the
parent's ``class_path``), anything else replaced (lists such as ``callbacks`` included).
The CLI hands the merged result to jsonargparse as one ``--config``. Consecutive
``--config`` files on the command line merge the same way, as if one file listed them in
``config:`` (``--config charades_kd.yaml --config my_losses.yaml`` adds ``my_losses``'
``distill`` entries to the experiment's; jsonargparse alone would replace the whole
``distill`` mapping). ``--key=value`` overrides apply on top as usual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kd_detect.errors import ConfigError

__all__ = ["ConfigError", "expand_config_includes", "load_config", "merge"]

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


def expand_config_includes(argv: list[str]) -> list[str]:
    """Replace every ``--config FILE`` whose file has includes by ``--config <merged YAML>``,
    and every run of consecutive ``--config FILE`` arguments by one ``--config`` of their
    merge (:func:`merge`, later files win), so that they compose like includes."""
    out: list[str] = []
    run: list[str] = []  # the YAML files of the current run of consecutive --config arguments

    def flush() -> None:
        if len(run) == 1 and not has_includes(run[0]):
            out.extend(["--config", run[0]])
        elif run:
            merged: dict[str, Any] = {}
            for value in run:
                merge(merged, load_config(value))
            out.extend(["--config", yaml.safe_dump(merged, sort_keys=False)])
        run.clear()

    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            flush()
            out.append(arg)
            i += 1
            continue
        if _yaml_file(value):
            run.append(value)
        else:  # a YAML string or a file jsonargparse reports on: passed through as given
            flush()
            out += ["--config", value]
    flush()
    return out
