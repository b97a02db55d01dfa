"""Method options: the discriminated union on `method:`, including distillation."""

from __future__ import annotations

import typing

import pytest

from domaintune.config import METHOD_NAMES, DistillOptions, LoraOptions, MethodConfig, TrainConfig, load_recipe
from domaintune.errors import UserError


def test_every_method_name_has_exactly_one_options_class():
    union = typing.get_args(typing.get_args(MethodConfig)[0])
    names = [cls.model_fields["method"].default for cls in union]
    assert tuple(names) == METHOD_NAMES and "distill" in names


def test_distill_options_parse_from_a_recipe_with_their_defaults(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  method: {method: distill, teacher: embedded, kd_weight: 0.7}\n")
    opts = load_recipe(str(path)).train.method
    assert isinstance(opts, DistillOptions)
    assert (opts.teacher, opts.temperature, opts.kd_weight, opts.student) == ("embedded", 2.0, 0.7, "lora")
    assert (opts.r, opts.alpha, opts.dropout, opts.target_modules) == (16, 32, 0.05, None)


@pytest.mark.parametrize("text,needle", [
    ("train:\n  method: {method: distill}\n", "teacher: required"),
    ("train:\n  method: {method: distill, teacher: t, kd_weight: 1.5}\n", "kd_weight"),
    ("train:\n  method: {method: distill, teacher: t, student: prefix}\n", "student"),
    ("train:\n  method: {method: distil, teacher: t}\n", "distill"),
])
def test_bad_distill_options(tmp_path, text, needle):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=needle):
        load_recipe(str(path))


def test_method_without_name_means_lora():
    assert TrainConfig.model_validate({"method": {"r": 8}}).method == LoraOptions(r=8)
