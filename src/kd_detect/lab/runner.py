"""Helpers behind ``make train`` / ``make compare`` (not part of the library API).

``python -m kd_detect.lab.runner deps EXP [ARGS...]`` prints what experiment ``EXP`` needs on
disk before it can run -- its data file and the teacher checkpoints it names -- so the
Makefile can build them first (data generated, teachers trained by their own experiment,
found from ``runs/<teacher exp>/best.ckpt``).

``python -m kd_detect.lab.runner stale EXP [ARGS...]`` (after the missing dependencies were
made) prints the teacher experiments whose existing run does not match what ``EXP`` would
train them with -- the teacher's experiment file plus the ARGS that apply to it (the
resolved ``config.yaml`` of its run must hold every value they set) and the data file's
content (``run.json`` against :func:`kd_detect.io.file_identity` now) -- one line each on
stderr saying why, so the Makefile retrains them. A student's file made by
``data_prep.add_unlabelled`` from the very file a teacher trained on counts as that file
(:func:`trained_on_base_of`). It stops (status 1, one line) when a
teacher run did not finish (resume or delete it) or when the default synthetic file
``data/synthetic.h5`` is not what the Makefile's recipe makes (an old v1-world file, or
one generated with other options).

``python -m kd_detect.lab.runner stale-caches EXP [ARGS...]`` prints the teacher caches of
``EXP`` computed from another data file than the student's (one line each on stderr why),
which the Makefile rebuilds.

``python -m kd_detect.lab.runner data EXP [ARGS...]`` prints the data file ``EXP`` reads
(nothing when it names none): the Makefile computes ``EXP``'s teacher caches from it, since
a student may read another file than its teacher's experiment names.

``python -m kd_detect.lab.runner current EXP [ARGS...]``: status 0 when ``runs/EXP`` is a
finished run matching ``EXP`` and its data, else one line why and status 1 (``make train``
then trains it).

``python -m kd_detect.lab.runner table EXP...`` prints the test figures of finished runs.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from kd_detect.config import config_files, load_config, merge
from kd_detect.errors import KdDetectError, UsageError
from kd_detect.runs import RunDir, section, training_order_seed

EXPERIMENTS = Path("experiments")
RUNS = Path("runs")


def _tokens(args: list[str]) -> list[str]:
    return [t for a in args for t in shlex.split(a)]


def _config(exp: str, args: list[str]) -> dict[str, Any]:
    """``experiments/<exp>.yaml`` merged with the ``--config FILE`` files of ``args``, in
    order, as the CLI merges them (``kd_detect.config``)."""
    cfg = load_config(EXPERIMENTS / f"{exp}.yaml")
    for path in config_files(_tokens(args)):
        merge(cfg, load_config(path))
    return cfg


def _overrides(args: list[str]) -> dict[str, str]:
    """The ``--key=value`` / ``--key value`` overrides of ``args`` (``--config`` files excluded)."""
    out = {}
    tokens = _tokens(args)
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
    out.pop("config", None)
    return out


def _named_paths(model: dict[str, Any], over: dict[str, str], key: str) -> list[str]:
    """The paths of the model's ``key`` mapping (``teachers``, ``teacher_caches``), with the
    ``--model.init_args.<key>.<name>=...`` overrides of ``over`` applied."""
    named = dict(model.get(key) or {})
    for option, value in over.items():
        for prefix in (f"model.init_args.{key}.", f"model.{key}."):
            if option.startswith(prefix):
                try:  # a cross-fitted teacher is a list: --model.init_args.teachers.t='[a, b]'
                    named[option[len(prefix):]] = yaml.safe_load(value)
                except yaml.YAMLError:
                    named[option[len(prefix):]] = value
    paths: list[str] = []
    for value in named.values():
        paths.extend(str(p) for p in (value if isinstance(value, list) else [value]) if p is not None)
    return paths


def data_and_teachers(exp: str, args: list[str]) -> tuple[str | None, list[str]]:
    """Experiment ``exp``'s data file (``None`` when it names none) and its teachers' checkpoints."""
    data, teachers, _ = _data_teachers_caches(exp, args)
    return data, teachers


def _data_teachers_caches(exp: str, args: list[str]) -> tuple[str | None, list[str], list[str]]:
    cfg = _config(exp, args)
    over = _overrides(args)
    data_path = over.get("data.path") or over.get("data.init_args.path") or section(cfg, "data").get("path")
    model = section(cfg, "model")
    return ((str(data_path) if data_path else None), _named_paths(model, over, "teachers"),
            _named_paths(model, over, "teacher_caches"))


def dependencies(exp: str, args: list[str]) -> list[str]:
    """Files experiment ``exp`` needs: its data file, its teachers' checkpoints, then its
    teacher caches (the Makefile writes ``runs/<teacher>/teacher_cache.h5`` from that
    teacher's checkpoint, again when the checkpoint is newer)."""
    data, teachers, caches = _data_teachers_caches(exp, args)
    return ([data] if data else []) + teachers + caches


def _flow(value: Any) -> str:
    """``value`` as one line of YAML (what a ``--key=value`` override reads back)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("...\n").strip()


#: data keys that say what a student reads, not what its teacher trains on: a teacher refuses
#: videos without labels, and its own experiment names the modalities it reads
STUDENT_DATA = ("unlabelled_subset", "modalities")


def teacher_args(args: list[str]) -> str:
    """The part of a student's ARGS that also applies to training its teacher: the data
    options the ARGS' ``--config`` files set (as overrides, so the teacher trains on the file
    the student reads), then the data, trainer and seed overrides. Everything else stays
    out (a model key would break the teacher's CLI), and so do the :data:`STUDENT_DATA` keys."""
    tokens = _tokens(args)
    files_data: dict[str, Any] = {}
    for path in config_files(tokens):
        merge(files_data, section(load_config(path), "data"))
    out = [f"--data.{key}={_flow(value)}" for key, value in files_data.items()
           if key not in STUDENT_DATA and not isinstance(value, dict)]
    student_only = tuple(f"--data.{key}" for key in STUDENT_DATA)
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        has_value = "=" not in tok and i + 1 < len(tokens) and not tokens[i + 1].startswith("--")
        group = [tok, tokens[i + 1]] if has_value else [tok]
        key = tok.split("=", 1)[0]
        if tok.startswith(("--data.", "--trainer.", "--seed_everything")) and key not in student_only:
            out.extend(group)
        i += len(group)
    return shlex.join(out)


#: resolved-config keys that do not change what a run learns (where it logs, how it shows
#: progress, how data is loaded), so they may differ between a run and its experiment
IGNORED_KEYS = (
    "trainer.default_root_dir", "trainer.logger", "trainer.enable_progress_bar", "ckpt_path", "test_after_fit",
    "data.num_workers", "data.pin_memory", "data.validate", "data.eval_batch_size",
)

#: the file the Makefile's data/synthetic.h5 recipe makes: `python -m data_prep.synthetic
#: --out data/synthetic.h5` with the default preset, seed and options
DEFAULT_SYNTHETIC = Path("data") / "synthetic.h5"


def expected_config(exp: str, args: list[str]) -> dict[str, Any]:
    """``experiments/<exp>.yaml`` (includes merged) with the ``--config`` files and the
    ``--key=value`` of ``args`` set."""
    cfg = _config(exp, args)
    for key, raw in _overrides(args).items():
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[last] = value
    return cfg


def _same(want: Any, got: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return want is got or want == got and type(want) is type(got)
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return float(want) == float(got)
    if isinstance(want, str) and isinstance(got, str) and want != got:
        return os.path.realpath(want) == os.path.realpath(got)  # the same file named two ways
    return want == got


def config_difference(want: Any, got: Any, key: str = "") -> str | None:
    """The first value ``want`` sets that ``got`` (a resolved config) does not hold, as one
    phrase (``trainer.max_epochs was 1 in the run, is 30 now``); ``None`` when
    ``got`` holds all of ``want`` (keys ``want`` leaves out may have any value)."""
    if key in IGNORED_KEYS or key.endswith(".save_dir"):
        return None
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{key} was {got!r} in the run, is a mapping now"
        for k, v in want.items():
            sub = f"{key}.{k}" if key else str(k)
            if k not in got:
                if f"{sub}" in IGNORED_KEYS:
                    continue
                return f"{sub} is missing in the run"
            found = config_difference(v, got[k], sub)
            if found:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return f"{key} was {got!r} in the run, is {want!r} now"
        for i, (w, g) in enumerate(zip(want, got)):
            found = config_difference(w, g, f"{key}[{i}]")
            if found:
                return found
        return None
    if not _same(want, got):
        return f"{key} was {got!r} in the run, is {want!r} now"
    return None


def data_difference(run: RunDir, data_path: Path) -> str | None:
    """Why ``run`` was not trained on the current content of ``data_path``, or ``None``
    (also when the run has no ``run.json``: then only the path in its config was compared,
    and one line on stderr says so)."""
    record = run.record()
    data = (record or {}).get("data")
    if data_path.is_file() and record is None:
        print(f"{run.path}: no run.json (trained before runs recorded their data): reused on its config.yaml "
              f"alone; delete {run.path} to retrain it", file=sys.stderr)
    if not data_path.is_file() or not isinstance(data, dict):
        return None
    from kd_detect.io import file_identity

    now = file_identity(data_path)
    if (data.get("size"), data.get("sha256")) != (now["size"], now["sha256"]):
        return f"{data_path} changed since the run was trained on it (size or content hash differ)"
    return None


def trained_on_base_of(run: RunDir, data_path: Path) -> str | None:
    """The data file ``run`` trained on (as its config names it) when ``data_path`` is that
    file, unchanged since, plus videos of subset ``unlabelled`` (``data_prep.add_unlabelled``
    records the base's identity in it); ``None`` otherwise. Such a file holds the run's
    training, validation and test videos bit for bit, so the run need not be retrained on it."""
    from kd_detect.data.format import unlabelled_base

    base = unlabelled_base(data_path) if data_path.is_file() else None
    trained = ((run.record() or {}).get("data") or {})
    if not base or not trained or (base.get("size"), base.get("sha256")) != (trained.get("size"), trained.get("sha256")):
        return None
    path = section(run.config(), "data").get("path")
    return str(path) if path else None


def order_difference(want: dict, recorded: dict) -> str | None:
    """A run whose videos came in another order than ``want``'s would give them. Runs before
    2026-12-07 recorded ``data.seed: 0`` whatever their ``seed_everything``, a value the
    experiments never set, so :func:`config_difference` alone would reuse them."""
    wanted, got = training_order_seed(want), training_order_seed(recorded)
    if wanted is None or got is None or wanted == got:
        return None
    follows = " (data.seed follows seed_everything)" if section(want, "data").get("seed") is None else ""
    return f"its training videos came in the order of seed {got} (data.seed), now that of seed {wanted}{follows}"


def run_difference(exp: str, args: list[str]) -> str | None:
    """Why ``runs/<exp>`` is not the run ``experiments/<exp>.yaml`` + ``args`` describes on
    the data file's current content; ``None`` when it is."""
    run = RunDir(RUNS / exp)
    recorded = run.config()
    if not recorded:
        return f"{run.path} has no config.yaml"
    want = expected_config(exp, args)
    found = config_difference(want, recorded) or order_difference(want, recorded)
    if found:
        return found
    data_path = section(want, "data").get("path")
    return data_difference(run, Path(str(data_path))) if data_path else None


#: the calibration of the default synthetic world that the experiments expect
#: (``data_prep.synthetic.REVISION``; a test keeps the two equal)
SYNTHETIC_REVISION = 2


def synthetic_difference(path: Path, expected: dict | None = None) -> str | None:
    """Why ``path`` is not what the Makefile's recipe makes (the default preset v2, seed 0,
    the generator options ``expected``: none for ``data/synthetic.h5``, ``extra_training``
    for make compare's ceiling file), from the attributes the generator writes; ``None``
    when it is, or when the file was not made by the generator at all."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            attrs = {k: h5.attrs[k] for k in ("generator", "world", "seed", "generator_preset", "generator_options",
                                              "generator_revision") if k in h5.attrs}
    except OSError:
        return None  # not HDF5: validation says so when the fit opens it
    as_str = lambda v: v.decode() if isinstance(v, bytes) else str(v)  # noqa: E731
    if as_str(attrs.get("generator", "")) != "data_prep.synthetic":
        return None
    if "generator_preset" not in attrs:
        if "world" not in attrs:
            return "it is the v1 world (generated before benchmark v2)"
        return "it was generated before the generator recorded its options, so what it holds is unknown"
    preset, options = as_str(attrs["generator_preset"]), json.loads(as_str(attrs.get("generator_options", "{}")))
    if preset != "v2" or options != (expected or {}) or int(attrs.get("seed", 0)) != 0:
        given = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in options.items())
        return f"it was generated with --preset {preset} --seed {int(attrs.get('seed', 0))} {given}".rstrip()
    if int(attrs.get("generator_revision", 1)) != SYNTHETIC_REVISION:
        return (f"it is revision {int(attrs.get('generator_revision', 1))} of the v2 world (an earlier calibration; "
                f"today's is {SYNTHETIC_REVISION}, README, Results)")
    return None


def stale_teachers(exp: str, args: list[str]) -> list[str]:
    """The teacher experiments of ``exp`` whose run must be retrained (module doc); raises
    :class:`UsageError` (one line) when it must stop instead."""
    data_path, teachers = data_and_teachers(exp, args)
    data = Path(data_path) if data_path else None
    if data is not None and data == DEFAULT_SYNTHETIC and data.is_file():
        why = synthetic_difference(data)
        if why:
            raise UsageError(
                f"{data} is not the synthetic benchmark the experiments expect: {why}. Regenerate it with "
                f"`make data` (or keep it under another name and pass ARGS=--data.path=FILE)"
            )
    stale = []
    for ckpt in teachers:
        path = Path(ckpt)
        try:  # runs/<exp>/best.ckpt, <exp> possibly in a folder (runs/folds/<fold teacher>)
            teacher = path.parent.relative_to(RUNS).as_posix()
        except ValueError:
            continue  # a checkpoint the user named: nothing to compare it with
        if not (EXPERIMENTS / f"{teacher}.yaml").is_file() or not path.is_file():
            continue
        run = RunDir(path.parent)
        if not run.finished():
            raise UsageError(
                f"{run.path}: its last fit did not finish (no metrics.json after run.json); resume it with "
                f"`make train EXP={teacher} RESUME=1` or delete {run.path} to retrain it"
            )
        t_args = shlex.split(teacher_args(args))
        t_data = section(expected_config(teacher, t_args), "data").get("path")
        base = trained_on_base_of(run, Path(str(t_data))) if t_data else None
        if base is not None:  # its file plus unlabelled videos: the content check is done, the config remains
            why = config_difference(expected_config(teacher, [*t_args, f"--data.path={base}"]), run.config())
        else:
            why = run_difference(teacher, t_args)  # its own data file included
        if (why is None and data is not None and Path(str(t_data)) != data  # the student's, if another
                and trained_on_base_of(run, data) is None):
            why = data_difference(run, data)
        if why is None and base is not None:
            print(f"{run.path}: reused: {t_data} is the file it trained on, {base}, with unlabelled videos added "
                  "(data_prep.add_unlabelled)", file=sys.stderr)
        if why:
            print(f"{run.path}: does not match experiments/{teacher}.yaml for {exp} ({why}); retraining it",
                  file=sys.stderr)
            stale.append(teacher)
    return stale


def stale_caches(exp: str, args: list[str]) -> list[str]:
    """The teacher caches ``runs/<teacher>/teacher_cache.h5`` of ``exp`` that exist but were
    computed from another data file than the one the student reads (one line each on
    stderr), which the Makefile then rebuilds from the teacher's checkpoint. A teacher
    reused for its file plus unlabelled videos keeps its checkpoint, so its cache is not
    rebuilt by a retraining and lacks those videos."""
    data, _, caches = _data_teachers_caches(exp, args)
    if not data or not Path(data).is_file():
        return []
    stale = []
    for cache in caches:
        path = Path(cache)
        if path.name != "teacher_cache.h5" or not path.is_file() or not (path.parent / "best.ckpt").is_file():
            continue  # a cache the user named: the student checks it and says how to rebuild it
        from kd_detect.data.teacher_cache import cache_source
        from kd_detect.io import content_hash

        source_file, source_sha256 = cache_source(path)
        if source_sha256 != content_hash(data):
            print(f"{path}: computed from {source_file or 'another file'}, but {exp} reads {data}; rebuilding it",
                  file=sys.stderr)
            stale.append(cache)
    return stale


def current(exp: str, args: list[str]) -> str | None:
    """Why ``runs/<exp>`` cannot be reused as is (not finished, or not matching), or ``None``."""
    run = RunDir(RUNS / exp)
    if not run.finished():
        return f"{run.path}: no finished run (metrics.json) yet"
    why = run_difference(exp, args)
    return f"{run.path}: does not match experiments/{exp}.yaml ({why})" if why else None


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
        elif cmd == "data":
            print(data_and_teachers(rest[0], rest[1:])[0] or "")
        elif cmd == "stale":
            print(" ".join(stale_teachers(rest[0], rest[1:])))
        elif cmd == "stale-caches":
            print(" ".join(stale_caches(rest[0], rest[1:])))
        elif cmd == "current":
            why = current(rest[0], rest[1:])
            if why:
                print(f"{why}; training it", file=sys.stderr)
                return 1
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
