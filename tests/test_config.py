"""kd_detect.config: experiment includes and the --config files of a command line compose the same way."""

from __future__ import annotations

import yaml

from kd_detect.config import config_files, expand_config_includes, load_config

EXPERIMENT = """\
model:
  class_path: kd_detect.modules.StudentModule
  init_args:
    lr: 0.001
    distill:
      global: {class_path: kd_detect.distill.GlobalContextualRelation, init_args: {weight: auto}}
trainer:
  callbacks: [a, b]
"""
EXTRA = """\
model:
  init_args:
    distill:
      logit_kd: {class_path: kd_detect.distill.LogitKD, init_args: {weight: auto}}
trainer:
  callbacks: [c]
data:
  unlabelled_subset: unlabelled
"""
WANT = {
    "model": {"class_path": "kd_detect.modules.StudentModule", "init_args": {"lr": 0.001, "distill": {
        "global": {"class_path": "kd_detect.distill.GlobalContextualRelation", "init_args": {"weight": "auto"}},
        "logit_kd": {"class_path": "kd_detect.distill.LogitKD", "init_args": {"weight": "auto"}}}}},
    "trainer": {"callbacks": ["c"]},  # lists are replaced, not concatenated
    "data": {"unlabelled_subset": "unlabelled"},
}


def _configs(argv):
    """The --config values of an argv, parsed (a path is read)."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--config":
            value = argv[i + 1]
            out.append(yaml.safe_load(open(value).read() if value.endswith(".yaml") else value))
    return out


def test_an_include_merges_mappings_and_replaces_the_rest(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "extra.yaml").write_text("config: exp.yaml\n" + EXTRA)
    assert load_config(tmp_path / "extra.yaml") == WANT


def test_consecutive_config_files_merge_like_includes(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "extra.yaml").write_text(EXTRA)
    (tmp_path / "both.yaml").write_text("config: [exp.yaml, extra.yaml]\n")
    argv = ["--config", str(tmp_path / "exp.yaml"), f"--config={tmp_path / 'extra.yaml'}", "--trainer.max_epochs=3"]
    out = expand_config_includes(argv)
    assert _configs(out) == [WANT] == [load_config(tmp_path / "both.yaml")]
    assert out[-1] == "--trainer.max_epochs=3"
    # the order decides who wins, as with includes
    swapped = expand_config_includes(["--config", str(tmp_path / "extra.yaml"), "--config", str(tmp_path / "exp.yaml")])
    assert _configs(swapped)[0]["trainer"]["callbacks"] == ["a", "b"]


def test_a_single_plain_config_and_a_yaml_string_pass_through(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    one = ["fit", "--config", str(tmp_path / "exp.yaml"), "--seed_everything=1"]
    assert expand_config_includes(one) == one
    # a YAML string is jsonargparse's, not a file: it stays where it was written
    inline = ["--config", str(tmp_path / "exp.yaml"), "--config", "{seed_everything: 3}"]
    assert expand_config_includes(inline) == inline
    assert config_files(inline) == [str(tmp_path / "exp.yaml")]


def test_files_apart_merge_where_the_first_stood_and_overrides_apply_on_top(tmp_path):
    """make train's own overrides stand between the experiment's file and the files of ARGS:
    those files must still add to the experiment's losses, not replace them."""
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "extra.yaml").write_text(EXTRA + "seed_everything: 7\n")
    apart = ["fit", "--config", str(tmp_path / "exp.yaml"), "--seed_everything=1", "--trainer.default_root_dir=runs/x",
             f"--config={tmp_path / 'extra.yaml'}", "--data.path=d.h5"]
    out = expand_config_includes(apart)
    assert out[:2] == ["fit", "--config"] and out[3:] == ["--seed_everything=1", "--trainer.default_root_dir=runs/x",
                                                         "--data.path=d.h5"]
    assert _configs(out) == [{**WANT, "seed_everything": 7}]  # the override on the line wins: it comes after


def test_files_before_and_after_a_subcommand_are_merged_apart(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "extra.yaml").write_text(EXTRA)
    (tmp_path / "top.yaml").write_text("fit: {seed_everything: 1}\n")
    argv = ["--config", str(tmp_path / "top.yaml"), "fit", "--config", str(tmp_path / "exp.yaml"),
            "--trainer.max_epochs", "fit", "--config", str(tmp_path / "extra.yaml")]
    out = expand_config_includes(argv)
    # a value "fit" after an option without '=' is that option's value, not a subcommand
    assert out[:4] == ["--config", str(tmp_path / "top.yaml"), "fit", "--config"]
    assert out[5:] == ["--trainer.max_epochs", "fit"]
    assert _configs(out)[1] == WANT
