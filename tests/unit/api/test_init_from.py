"""`train --init-from RUN`: the adapter continues from that run's trained weights (not from scratch),
and a run of another method is refused with one clear line."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from domaintune import api
from domaintune.config import apply_overrides
from domaintune.errors import UserError

ADAPTER = "adapter/adapter_model.safetensors"


def test_a_run_starts_from_the_weights_of_another(make_recipe, tmp_path):
    first = api.train(make_recipe(), force=True, progress=False)
    still = ["train.learning_rate=1e-12", "train.max_steps=1", "train.neighbour_prior=false"]
    cont = api.train(apply_overrides(make_recipe(), still + [f"train.output_dir={tmp_path / 'cont'}",
                                                              f"train.init_from={first.run_dir}"]),
                     force=True, progress=False)
    fresh = api.train(apply_overrides(make_recipe(), still + [f"train.output_dir={tmp_path / 'fresh'}"]),
                      force=True, progress=False)
    a, b, c = (load_file(str(run.run_dir / ADAPTER)) for run in (first, cont, fresh))
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and all(a[k].abs().sum() > 0 for k in lora_b)  # the first run learned something
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # the continued run starts there
    assert all(c[k].abs().sum() < 1e-6 * a[k].abs().sum() for k in lora_b)  # a fresh LoRA starts with B = 0


def test_another_method_is_refused(make_recipe, tmp_path):
    first = api.train(make_recipe(), force=True, progress=False)
    r = make_recipe()
    other = r.model_copy(update={"train": r.train.model_copy(update={
        "output_dir": str(tmp_path / "ia3"), "method": {"method": "ia3"}, "init_from": str(first.run_dir)})})
    other = apply_overrides(other, [])  # validated again, as a recipe file would be
    with pytest.raises(UserError, match="is a lora run; this run trains ia3"):
        api.train(other, force=True, progress=False)
