"""Every command's --help renders, explains its options, and ends with runnable examples."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["prepare", "train", "inspect", "eval", "compare", "review", "export", "serve", "chat", "agree", "validate",
            "recipe", "demo"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "domaintune", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    for name in COMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_command_help_has_examples(name):
    out = run(name, "--help")
    assert out.returncode == 0, out.stderr
    assert "examples:" in out.stdout
    assert f"domaintune {name}" in out.stdout.split("examples:")[1]


def test_prepare_help_comes_from_field_descriptions():
    from domaintune.config import PrepareConfig
    out = run("prepare", "--help").stdout
    first_words = PrepareConfig.model_fields["max_tokens"].description.split()[:3]
    assert " ".join(first_words) in " ".join(out.split())


def test_user_error_is_one_line_exit_2(tmp_path):
    out = run("prepare", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o"), "--model", "none", "-q")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "missing.jsonl" in out.stderr


def test_bad_recipe_key_exit_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prepare:\n  colour: red\n")
    out = run("validate", str(recipe))
    assert out.returncode == 2
    assert f"{recipe}:2:" in out.stderr and "colour" in out.stderr
    assert "Traceback" not in out.stderr


def test_help_does_not_import_torch():
    code = ("import sys, runpy; sys.argv=['domaintune','--help']\n"
            "try:\n    runpy.run_module('domaintune', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "TORCH False" in out.stdout
