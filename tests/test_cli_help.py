"""Every command's --help renders, explains its options, and ends with runnable examples."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["prepare", "train", "inspect", "eval", "compare", "review", "export", "serve", "chat", "agree", "validate",
            "recipe", "demo", "monitor"]


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


def test_monitor_drift_reads_a_store_and_says_where_drift_began(tmp_path):
    import json
    from importlib import resources

    from domaintune.data.store import Store

    def rows(name):
        text = resources.files("domaintune.datasets").joinpath(name).read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    icd, general = rows("icd10_chapters.jsonl"), rows("general_prompts.jsonl")
    (tmp_path / "prepared").mkdir()
    (tmp_path / "prepared" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in icd[:1500]), encoding="utf-8")
    store = Store(tmp_path / "traffic.db")
    for i, row in enumerate(icd[1500:1540] + general[:40]):
        label = row["messages"][1]["content"] if len(row["messages"]) > 1 else "Neoplasms"
        store.write({"id": f"chatcmpl-{i}", "model": "icd", "prompt": row["messages"][:1], "output": [label],
                     "status": 200, "confidences": [None]})
    store.close()
    out = run("monitor", "drift", "--reference", str(tmp_path / "prepared"), "--store", str(tmp_path / "traffic.db"),
              "--window", "40", "-o", str(tmp_path / "drift"))
    assert out.returncode == 0, out.stderr
    assert "2 window(s) of 40" in out.stdout and "DRIFT: first alarm at request 80" in out.stdout
    assert (tmp_path / "drift" / "drift.png").is_file()
    missing = run("monitor", "drift", "--reference", str(tmp_path / "nope"), "--store", str(tmp_path / "traffic.db"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr
