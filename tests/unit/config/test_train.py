"""The train section's guards against forgetting: replay, EWC, curriculum, stages, term weights."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from domaintune.config import (CurriculumConfig, EwcConfig, ReplayConfig, StageConfig, TrainConfig, field_help,
                               load_recipe)
from domaintune.errors import UserError


def write(tmp_path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_forgetting_sections_load_from_yaml(tmp_path):
    path = write(tmp_path, """train:
  replay: {data: bundled:general_prompts.jsonl, ratio: 0.3}
  ewc: {reference: general/val.jsonl, weight: 50}
  curriculum: {by: metadata.difficulty}
  stages:
    - {data_dir: general_prepared, epochs: 1, learning_rate: 1.0e-4}
    - {data_dir: prepared}
  terms: terms.csv
  term_weight: 3
""")
    cfg = load_recipe(path).train
    assert cfg.replay == ReplayConfig(data="bundled:general_prompts.jsonl", ratio=0.3)
    assert (cfg.ewc.weight, cfg.ewc.samples) == (50.0, 64)
    assert cfg.curriculum.order == ["easy", "medium", "hard"]
    assert [s.data_dir for s in cfg.stages] == ["general_prepared", "prepared"]
    assert (cfg.terms, cfg.term_weight) == ("terms.csv", 3.0)


def test_defaults_turn_every_guard_off():
    cfg = TrainConfig()
    assert (cfg.replay, cfg.ewc, cfg.curriculum, cfg.stages, cfg.terms) == (None, None, None, [], None)
    assert cfg.stage_configs() == [cfg]


def test_unknown_key_inside_a_stage_names_its_line_and_the_allowed_keys(tmp_path):
    path = write(tmp_path, "train:\n  stages:\n    - {epochs: 1}\n    - {data_dir: p, lr: 0.1}\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:4:" in msg and "train.stages.1.lr" in msg
    assert "allowed keys: data_dir, epochs, learning_rate, max_steps" in msg


@pytest.mark.parametrize("text,needle", [
    ("train:\n  replay: {ratio: 0.2}\n", "train.replay.data: required"),
    ("train:\n  replay: {data: g.jsonl, ratio: 0}\n", "greater than 0"),
    ("train:\n  ewc: {reference: r.jsonl, weight: -1}\n", "train.ewc.weight"),
    ("train:\n  ewc: {reference: r.jsonl, samples: 0}\n", "train.ewc.samples"),
    ("train:\n  curriculum: {by: difficulty}\n", "'length' or 'metadata.<field>'"),
    ("train:\n  curriculum: {by: metadata.level, order: []}\n", "must list the bucket values"),
    ("train:\n  term_weight: 3.0\n", "train.term_weight needs train.terms"),
    ("train:\n  terms: t.csv\n  term_weight: 0\n", "greater than 0"),
    ("train:\n  stages: [{max_steps: 0}]\n", "train.stages.0.max_steps"),
])
def test_bad_values_are_one_clear_error(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle):
        load_recipe(write(tmp_path, text))


def test_curriculum_accepts_numbers_and_length():
    assert CurriculumConfig(by="metadata.level", order=[1, 2, 3]).order == [1, 2, 3]
    assert CurriculumConfig(by="length", order=[], length_buckets=4).length_buckets == 4
    with pytest.raises(ValidationError):
        CurriculumConfig(by="metadata.")


def test_stage_configs_apply_overrides_and_inherit_the_rest():
    cfg = TrainConfig(max_steps=9, learning_rate=1e-3, data_dir="domain", seed=4,
                      stages=[StageConfig(data_dir="general", epochs=2), StageConfig(learning_rate=1e-5),
                              StageConfig(epochs=1, max_steps=3)])
    first, second, third = cfg.stage_configs()
    assert (first.data_dir, first.epochs, first.max_steps, first.learning_rate) == ("general", 2.0, None, 1e-3)
    assert (second.data_dir, second.max_steps, second.learning_rate) == ("domain", 9, 1e-5)
    assert (third.epochs, third.max_steps) == (1.0, 3)
    assert all(s.stages == [] and s.seed == 4 for s in (first, second, third))
    assert len(cfg.stages) == 3  # the section itself is left alone


@given(ratio=st.floats(min_value=1e-3, max_value=10), weight=st.floats(min_value=0, max_value=1e6))
def test_numbers_round_trip_through_dump_and_load(ratio, weight):
    # recipe.resolved.yaml is a full dump, loaded back on --resume: every key set, defaults included.
    cfg = TrainConfig(replay=ReplayConfig(data="g.jsonl", ratio=ratio), ewc=EwcConfig(reference="r", weight=weight),
                      curriculum=CurriculumConfig(by="metadata.level", order=[1, "two"]),
                      stages=[StageConfig(epochs=ratio), StageConfig(data_dir="d")])
    assert TrainConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_every_new_field_has_help_text():
    for model in (ReplayConfig, EwcConfig, CurriculumConfig, StageConfig):
        for name in model.model_fields:
            assert field_help(model, name), f"{model.__name__}.{name}"
    for name in ("replay", "ewc", "curriculum", "stages", "terms", "term_weight"):
        assert field_help(TrainConfig, name)


@pytest.mark.parametrize("bad", ["..", "../run", "a/b", "/abs", ".hidden", "", "x" * 65])
def test_domain_names_must_be_plain_folder_names(bad):
    with pytest.raises(ValidationError, match="plain folder name"):
        TrainConfig(domains=["icd", bad])


def test_plain_domain_names_pass():
    assert TrainConfig(domains=["cardiology", "law_v2", "fin-2026.q1"]).domains[0] == "cardiology"
