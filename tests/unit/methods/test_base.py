"""The method registry, the unknown-method error, the trainable report and method.json."""

from __future__ import annotations

import pytest
from torch import nn

from domaintune.config import METHOD_NAMES
from domaintune.errors import UserError
from domaintune.methods import get_method, saved_method, trainable_report
from domaintune.methods.base import REGISTRY, TrainableReport, all_methods, write_method_file


def test_every_method_name_is_registered_under_its_name():
    methods = all_methods()
    assert tuple(methods) == METHOD_NAMES
    for name, method in methods.items():
        assert method.name == name and REGISTRY[name] is method
        assert all(callable(getattr(method, f)) for f in ("apply", "save", "load", "merge"))


def test_unknown_method_lists_the_known_ones_and_suggests():
    with pytest.raises(UserError) as err:
        get_method("loar")
    text = str(err.value)
    assert "unknown method 'loar'" in text and "did you mean 'lora'?" in text
    assert all(name in text for name in METHOD_NAMES)


def test_report_counts_tied_weights_once_and_formats():
    model = nn.Sequential(nn.Embedding(1000, 100), nn.Linear(100, 1000, bias=False))
    model[1].weight = model[0].weight  # tied, as SmolLM2's head
    model[0].requires_grad_(False)
    model.append(nn.Linear(100, 10))  # 1010 trainable
    report = trainable_report(model)
    assert (report.trainable, report.total) == (1010, 101_010)
    assert str(report) == "trainable 1.01K / 101K (1.00%)"


@pytest.mark.parametrize(("trainable", "total", "text"), [
    (1_234_567, 135_000_000, "trainable 1.23M / 135M (0.91%)"),
    (7, 7, "trainable 7 / 7 (100.00%)"),
    (0, 2_500_000_000, "trainable 0 / 2.5B (0.00%)"),
])
def test_report_text(trainable, total, text):
    assert str(TrainableReport(trainable, total)) == text


def test_saved_method_reads_method_json(tmp_path):
    write_method_file(tmp_path / "out", "freeze", trained=["a"])
    assert saved_method(tmp_path / "out") == "freeze"
    with pytest.raises(UserError, match="holds no method.json"):
        saved_method(tmp_path)


def test_report_of_a_frozen_model_is_zero():
    model = nn.Linear(4, 4).requires_grad_(False)
    assert trainable_report(model).share == 0.0
    assert trainable_report(nn.Module()).share == 0.0
