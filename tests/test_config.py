"""kd_detect.config: experiment includes and consecutive --config files compose the same way."""

from __future__ import annotations

import yaml

from kd_detect.config import expand_config_includes, load_config

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


def test_a_single_plain_config_and_separated_ones_pass_through(tmp_path):
    (tmp_path / "exp.yaml").write_text(EXPERIMENT)
    (tmp_path / "extra.yaml").write_text(EXTRA)
    one = ["fit", "--config", str(tmp_path / "exp.yaml"), "--seed_everything=1"]
    assert expand_config_includes(one) == one
    # an override between two files keeps jsonargparse's order: file, override, file
    apart = ["--config", str(tmp_path / "exp.yaml"), "--model.init_args.lr=0.1", "--config", str(tmp_path / "extra.yaml")]
    assert expand_config_includes(apart) == apart
    # a YAML string is jsonargparse's, not a file: it ends a run and passes through
    inline = ["--config", str(tmp_path / "exp.yaml"), "--config", "{seed_everything: 3}"]
    assert expand_config_includes(inline) == inline
