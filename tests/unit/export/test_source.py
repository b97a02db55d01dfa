"""Reading a run folder: clear errors for what is missing, merge refused for methods that cannot fold."""

from __future__ import annotations

import pytest

from domaintune.errors import UserError
from domaintune.export.source import load_merged, open_run


def test_open_run_reads_recipe_and_method(lora_run, tiny_llama):
    run = open_run(lora_run)
    assert (run.base, run.template_name, run.method, run.is_peft) == (str(tiny_llama), "chatml", "lora", True)
    assert run.artifact == lora_run / "adapter"
    assert open_run(lora_run / "adapter") == run  # the adapter folder stands for its run


def test_a_run_recipe_cannot_turn_on_remote_code(lora_run, tmp_path):
    import shutil

    copy = tmp_path / "shared_run"
    shutil.copytree(lora_run, copy)
    recipe = copy / "recipe.resolved.yaml"
    recipe.write_text(recipe.read_text().replace("model:\n", "model:\n  trust_remote_code: true\n", 1))
    assert "trust_remote_code: true" in recipe.read_text()
    assert open_run(copy).trust_remote_code is False  # only the user's --trust-remote-code turns it on
    assert open_run(copy, trust_remote_code=True).trust_remote_code is True


@pytest.mark.parametrize("layout, match", [
    ("missing", "not found"), ("no_recipe", "recipe.resolved.yaml"), ("no_artifact", "neither adapter/ nor model/")])
def test_bad_run_folders_are_user_errors(layout, match, tmp_path, tiny_llama):
    folder = tmp_path / "run"
    if layout != "missing":
        folder.mkdir()
    if layout == "no_artifact":
        (folder / "recipe.resolved.yaml").write_text(f"model:\n  name: {tiny_llama}\n")
    with pytest.raises(UserError, match=match) as err:
        open_run(folder)
    assert err.value.hint


def test_full_run_merges_to_its_own_weights(run_factory, tiny_llama):
    run = open_run(run_factory(tiny_llama, "full"))
    assert run.artifact.name == "model" and type(load_merged(run)).__name__ == "LlamaForCausalLM"


def test_prompt_tuning_cannot_be_merged(run_factory, tiny_llama):
    with pytest.raises(UserError, match="cannot be merged") as err:
        load_merged(open_run(run_factory(tiny_llama, "prompt")))
    assert "--format adapter" in err.value.hint
