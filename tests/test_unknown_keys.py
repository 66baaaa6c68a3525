"""Issue 16: a mistyped key of ``kd-detect fit`` is named on the FIRST line with the nearest
valid key (before: line 70-75 of 73-81 lines of usage and Union reports); jsonargparse's
full report only with ``--verbose``; exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from kd_detect.apps.unknown_keys import class_parameters, nearest, unknown_key_line
from kd_detect.cli import main

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def fit_error(argv, capsys) -> list[str]:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *argv])
    assert exc.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


HINT = "(kd-detect fit --help lists every key; --verbose shows the parser's full report)"


@pytest.mark.parametrize("config, key, line", [
    ("synthetic_rgb", "--model.init_args.lr_patiense=3",
     "unknown key --model.init_args.lr_patiense (not a parameter of kd_detect.modules.DetectorModule); "
     "did you mean --model.init_args.lr_patience?"),
    ("synthetic_kd", "--model.init_args.distill.atomic.init_args.weigth=0.1",
     "unknown key --model.init_args.distill.atomic.init_args.weigth (not a parameter of "
     "kd_detect.distill.AtomicContrastive); did you mean --model.init_args.distill.atomic.init_args.weight?"),
    ("synthetic_rgb", "--model.init_args.head.init_args.hiden=3",
     "unknown key --model.init_args.head.init_args.hiden (not a parameter of kd_detect.models.heads.PDAN); "
     "did you mean --model.init_args.head.init_args.hidden?"),
    ("synthetic_rgb", "--data.pth=x.h5", "unknown key --data.pth; did you mean --data.path?"),
])
def test_typo_key_is_the_first_line_with_the_nearest_key(config, key, line, capsys):
    err = fit_error(["--config", str(EXPERIMENTS / f"{config}.yaml"), key], capsys)
    assert err == [f"kd-detect fit: error: {line}", HINT]


def test_verbose_adds_the_parsers_report_after_the_line(capsys):
    err = fit_error(["--config", str(EXPERIMENTS / "synthetic_kd.yaml"),
                     "--model.init_args.distill.atomic.init_args.weigth=0.1", "--verbose"], capsys)
    assert err[0].startswith("kd-detect fit: error: unknown key --model.init_args.distill.atomic.init_args.weigth")
    assert err[-1] == "  Given value: NestedArg(key='distill.atomic.init_args.weigth', val='0.1')"
    assert len(err) > 50


def test_typo_in_a_config_file_is_named_too(tmp_path, capsys):
    nested = tmp_path / "nested.yaml"
    nested.write_text("model:\n  init_args:\n    lr_patiense: 3\n")
    top = tmp_path / "top.yaml"
    top.write_text("trainer:\n  max_epohs: 3\n")
    base = ["--config", str(EXPERIMENTS / "synthetic_rgb.yaml"), "--config"]
    assert fit_error([*base, str(nested)], capsys)[0] == (
        "kd-detect fit: error: unknown key 'lr_patiense' in a --config file "
        "(not a parameter of kd_detect.modules.DetectorModule); did you mean 'lr_patience'?")
    assert fit_error([*base, str(top)], capsys)[0] == (
        "kd-detect fit: error: unknown key trainer.max_epohs in a --config file; did you mean trainer.max_epochs?")


def test_other_parse_errors_keep_jsonargparse_text(capsys):
    err = fit_error(["--config", str(EXPERIMENTS / "synthetic_rgb.yaml"), "--trainer.max_epochs=many"], capsys)
    assert err[0].startswith("usage: kd-detect") and "max_epochs" in "\n".join(err[-8:])


def test_helpers():
    assert nearest("weigth", ["weight", "window", "tau"]) == "weight"
    assert nearest("zzz", ["weight"]) is None
    assert "weight" in class_parameters("kd_detect.distill.AtomicContrastive")
    assert class_parameters("kd_detect.NoSuchClass") == []
    assert unknown_key_line("Parser key 'x': expected int", []) is None


def test_verbose_is_ours_only_as_a_bare_flag():
    """`kd-detect test --verbose true` is trainer.test's own option: left to the parser."""
    import kd_detect.apps.lightning as app

    seen = {}

    class Probe(app.KDCLI):
        def __init__(self, *args, **kwargs):  # records what would be parsed, runs nothing
            seen["args"] = kwargs["args"]

    app.lightning_main(["test", "--verbose", "true", "--trainer.max_epochs=1"], cli_class=Probe)
    assert seen["args"] == ["test", "--verbose", "true", "--trainer.max_epochs=1"]
    assert app.KDArgumentParser.verbose is False
    app.lightning_main(["fit", "--trainer.max_epochs=1", "--verbose"], cli_class=Probe)
    assert seen["args"] == ["fit", "--trainer.max_epochs=1"] and app.KDArgumentParser.verbose is True
    app.KDArgumentParser.verbose = False


def test_options_a_plugin_refuses_end_in_one_line_naming_the_class(synthetic_h5, capsys):
    """Two options that do not combine (within-video negatives gathered across ranks) are
    refused by the plugin's constructor: one line naming the class and the reason, not the
    ~110 lines of jsonargparse's Union report and three chained tracebacks."""
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(EXPERIMENTS / "synthetic_kd.yaml"), f"--data.path={synthetic_h5}",
              "--model.init_args.distill.atomic.init_args.gather_distributed=true"])
    assert str(exc.value.code) == ("kd-detect: error: AtomicContrastive: negatives='video' keeps negatives within "
                                   "a video: gather_distributed adds nothing (--verbose shows the full trace)")
    assert "Traceback" not in capsys.readouterr().err


def test_refused_by_constructor_only_names_our_own_constructors():
    from kd_detect.apps.lightning import refused_by_constructor
    from kd_detect.distill import AtomicContrastive, GlobalContextualRelation

    try:
        AtomicContrastive(negatives="video", gather_distributed=True)
    except ValueError as err:
        inner = err
    try:  # chained under another error, as jsonargparse does
        raise ValueError("Does not validate against any of the Union subtypes") from inner
    except ValueError as err:
        assert refused_by_constructor(err) == f"AtomicContrastive: {inner}"
    try:
        GlobalContextualRelation(tau_r=-1.0)
    except ValueError as err:
        assert refused_by_constructor(err).startswith("GlobalContextualRelation: ")
    try:  # a ValueError raised outside kd_detect (here by int()) keeps the full report
        int("x")
    except ValueError as err:
        assert refused_by_constructor(err) is None
    assert refused_by_constructor(None) is None
