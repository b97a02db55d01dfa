"""Recipe loading: unknown keys, wrong values, line numbers, overrides, precedence."""

from __future__ import annotations

import pytest

from domaintune.config import Recipe, load_recipe
from domaintune.errors import UserError


def write(tmp_path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_without_file():
    recipe = load_recipe(None)
    assert recipe.model.name == "embedded"
    assert recipe.prepare.split.ratios == (0.8, 0.1, 0.1)
    assert recipe.prepare.dedup.threshold == 0.85


def test_unknown_key_names_file_line_and_close_match(tmp_path):
    path = write(tmp_path, "prepare:\n  seed: 1\n  sead: 3\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert f"{path}:3:" in msg
    assert "prepare.sead" in msg and "did you mean 'seed'" in msg
    assert "\n" not in msg


def test_all_errors_reported_at_once(tmp_path):
    path = write(tmp_path, "prepare:\n  dedup:\n    threshold: 2\n  split: {train: 0.5}\n  bogus: 1\n")
    with pytest.raises(UserError) as err:
        load_recipe(path)
    msg = str(err.value)
    assert ":3:" in msg and "threshold" in msg
    assert "sum to 1" in msg
    assert ":5:" in msg and "bogus" in msg


def test_overrides_win_over_file_and_parse_types(tmp_path):
    path = write(tmp_path, "prepare:\n  seed: 1\n  mix:\n    ratios: {a: 0.5, b: 0.5}\n")
    recipe = load_recipe(path, ["prepare.seed=9", "prepare.mix.ratios.a=0.25", "prepare.dedup.near=false"])
    assert recipe.prepare.seed == 9
    assert recipe.prepare.mix.ratios == {"a": 0.25, "b": 0.5}
    assert recipe.prepare.dedup.near is False


def test_flags_base_win_over_file(tmp_path):
    path = write(tmp_path, "prepare:\n  seed: 1\n  max_tokens: 100\n")
    recipe = load_recipe(path, base={"prepare": {"seed": 5}})
    assert (recipe.prepare.seed, recipe.prepare.max_tokens) == (5, 100)


@pytest.mark.parametrize("text,needle", [
    ("prepare: [1, 2]\n", "prepare"),
    ("prepare:\n  chunk: {max_tokens: 64, overlap: 64}\n", "overlap"),
    ("prepare:\n  role_injection: ignore\n", "role_injection"),
    ("model:\n  name: [x\n", "invalid YAML"),
])
def test_bad_values(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle):
        load_recipe(write(tmp_path, text))


def test_missing_file_and_bad_set():
    with pytest.raises(UserError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")
    with pytest.raises(UserError, match="--set"):
        load_recipe(None, ["novalue"])


def test_recipe_is_a_light_leaf():
    import subprocess
    import sys
    code = "import sys, domaintune.config; print(any(m in sys.modules for m in ('torch', 'transformers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_input_source_defaults_to_stem():
    recipe = Recipe.model_validate({"prepare": {"inputs": [{"path": "dir/cases.jsonl"}, {"path": "x.csv", "name": "g"}]}})
    assert [i.source for i in recipe.prepare.inputs] == ["cases", "g"]
