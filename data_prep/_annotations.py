"""Reading what a release ships besides features: required files and folders, class lists,
charades.json-style annotation files, the ``--modalities`` option. Errors are
:class:`~data_prep._common.ConversionError` lines naming the file (and line) at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from data_prep._common import TESTING, TRAINING, ConversionError, VideoSpec


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a :class:`ConversionError` saying what was expected."""
    if not path.is_file():
        raise ConversionError(f"{path}: {what} not found")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise ConversionError(f"{path}: {what} directory not found")
    return path


def read_class_names(path: Path, expected: int | None = None) -> list[str]:
    """Class names from a text file, one class a line.

    Accepted lines: ``<id> <name>`` where ``<id>`` is ``cNNN`` or an integer (ids must
    then be contiguous, starting at 0 or 1; names are ordered by id), or ``<name>``
    alone (order of the file). Blank lines are ignored; forms may not be mixed.
    """
    require_file(path, "class list")
    entries: list[tuple[int | None, str, int]] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable class list ({err})") from err
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.split(None, 1)
        token = parts[0]
        digits = token[1:] if token[:1] in ("c", "C") and token[1:].isdigit() else token
        if digits.isdigit() and len(parts) == 2:
            entries.append((int(digits), parts[1].strip(), lineno))
        else:
            entries.append((None, line, lineno))
    if not entries:
        raise ConversionError(f"{path}: class list is empty")
    with_id = [e for e in entries if e[0] is not None]
    if with_id and len(with_id) != len(entries):
        bad = next(e for e in entries if e[0] is None)
        raise ConversionError(f"{path}:{bad[2]}: expected '<id> <name>' like the other lines, got {bad[1]!r}")
    if with_id:
        ordered = sorted(with_id)
        base = ordered[0][0]
        for k, (cid, _, lineno) in enumerate(ordered):
            if base not in (0, 1) or cid != base + k:
                raise ConversionError(
                    f"{path}:{lineno}: class ids must be contiguous from 0 or 1, id {cid} breaks the sequence"
                )
        names = [name for _, name, _ in ordered]
    else:
        names = [name for _, name, _ in entries]
    if expected is not None and len(names) != expected:
        raise ConversionError(f"{path}: expected {expected} classes, found {len(names)}")
    return names


def parse_json_annotations(
    path: Path,
    *,
    num_classes: int,
    class_base: int = 0,
    time_scale: float = 1.0,
    subset_aliases: dict[str, str] | None = None,
) -> list[VideoSpec]:
    """Read ``{id: {subset, duration, actions: [[cls, start, end], ...]}}``.

    Class ids are shifted by ``class_base`` to 0-based and must fall in
    ``[0, num_classes)``; ``duration``, ``start``, ``end`` are multiplied by
    ``time_scale`` (e.g. ``1/fps`` for frame units). ``subset`` is mapped through
    ``subset_aliases`` (default: training/train → training, testing/test → testing).
    """
    import json

    require_file(path, "annotation JSON")
    aliases = subset_aliases or {"training": TRAINING, "train": TRAINING, "testing": TESTING, "test": TESTING}
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno})") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConversionError(f"{path}: unreadable annotation file ({err})") from err
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: expected a JSON object {{video_id: {{subset, duration, actions}}}}")
    specs = []
    for vid, entry in data.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(entry, dict):
            raise ConversionError(f"{where}: expected an object with fields subset, duration, actions")
        for key in ("subset", "duration", "actions"):
            if key not in entry:
                raise ConversionError(f"{where}: field {key!r} missing")
        subset = entry["subset"]
        if subset not in aliases:
            raise ConversionError(f"{where}: field 'subset' is {subset!r}, expected one of {sorted(aliases)}")
        duration = _number(entry["duration"], f"{where}: field 'duration'")
        actions = entry["actions"]
        if not isinstance(actions, list):
            raise ConversionError(f"{where}: field 'actions' must be a list of [class, start, end]")
        segments = []
        for k, action in enumerate(actions):
            field_name = f"{where}: field 'actions'[{k}]"
            if not isinstance(action, (list, tuple)) or len(action) != 3:
                raise ConversionError(f"{field_name}: expected [class, start, end], got {action!r}")
            cls = action[0]
            if isinstance(cls, bool) or not isinstance(cls, (int, float)) or float(cls) != int(cls):
                raise ConversionError(f"{field_name}: class must be an integer, got {cls!r}")
            cid = int(cls) - class_base
            if not 0 <= cid < num_classes:
                raise ConversionError(
                    f"{field_name}: class {int(cls)} outside {class_base}..{class_base + num_classes - 1} "
                    f"({num_classes} classes, {class_base}-based ids)"
                )
            start = _number(action[1], f"{field_name} start")
            end = _number(action[2], f"{field_name} end")
            segments.append((cid, start * time_scale, end * time_scale))
        specs.append(VideoSpec(str(vid), aliases[subset], duration * time_scale, segments, f"{path}: video {vid!r}"))
    return specs


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversionError(f"{where}: expected a number, got {value!r}")
    return float(value)


def parse_modalities(value: str | Sequence[str], available: Sequence[str], dataset: str) -> list[str]:
    """``"rgb,flow"`` (or a list) → validated list of modality names."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    names = [n for n in names if n]
    bad = [n for n in names if n not in available]
    if bad or not names or len(set(names)) != len(names):
        raise ConversionError(f"{dataset}: --modalities must be distinct names from {list(available)}, got {value!r}")
    return names


# ----------------------------------------------------------------------------- CLI
