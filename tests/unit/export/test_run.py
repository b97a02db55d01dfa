"""run_export end to end on the tiny LLaMA run: every format, its report, and the bad-input errors."""

from __future__ import annotations

import json

import pytest

from domaintune.errors import UserError
from domaintune.export.run import check_format, run_export

RECORDS = [{"messages": [{"role": "user", "content": "What is the capital of France?"},
                         {"role": "assistant", "content": "Paris."}]},
           {"messages": [{"role": "user", "content": "请用三句话总结这份报告。"},
                         {"role": "assistant", "content": "好的。"}]}]


@pytest.mark.parametrize("fmt, quant, files", [
    ("hf", None, {"model.safetensors", "generation_config.json", "tokenizer.json"}),
    ("adapter", None, {"adapter_config.json", "adapter_model.safetensors", "method.json"}),
    ("gguf", "q8_0", {"model.gguf", "Modelfile"}),
    ("int8", None, {"model.int8.safetensors", "config.json", "tokenizer.json"}),
])
def test_each_format_writes_checks_and_reports(fmt, quant, files, lora_run, tmp_path):
    report = run_export(lora_run, fmt, tmp_path / "out", quant, RECORDS, max_new_tokens=8)
    assert files <= set(report.files)
    assert all(row.ids_equal for row in report.parity) and len(report.parity) == 2
    reference, exported = report.variants[0], report.variants[-1]
    assert reference.exact_match is not None and exported.size_bytes == sum(report.files.values())
    if fmt in ("hf", "adapter"):
        assert report.parity_ok and exported.top1_agreement == 1.0 and exported.exact_continuations == 2
    else:
        assert exported.top1_agreement >= 0.5  # reported, not required (tiny random model, 16 positions)
    saved = json.loads((tmp_path / "out" / "export_report.json").read_text())
    assert saved["format"] == fmt and saved["parity_ok"] == report.parity_ok
    assert "| model | size |" in (tmp_path / "out" / "export_report.md").read_text()


def test_gguf_without_quant_is_f16_and_reports_no_speed(lora_run, tmp_path):
    report = run_export(lora_run, "gguf", tmp_path, samples=1, max_new_tokens=4)
    assert report.quant == "f16" and report.variants[-1].ms_per_token is None
    assert "llama-server -m" in report.commands["llama.cpp"] and "ollama create" in report.commands["Ollama"]


def test_rerun_into_the_same_export_folder_is_allowed_but_not_into_others(lora_run, tmp_path):
    run_export(lora_run, "hf", tmp_path / "a", samples=1, max_new_tokens=2)
    run_export(lora_run, "hf", tmp_path / "a", samples=1, max_new_tokens=2)
    with pytest.raises(UserError, match="not empty"):
        run_export(lora_run, "int8", tmp_path / "a", samples=1, max_new_tokens=2)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        run_export(lora_run, "hf", tmp_path / "b")


@pytest.mark.parametrize("fmt, quant, match", [
    ("onnx", None, "unknown export format"), ("hf", "q8_0", "--format gguf only"), ("gguf", "q4_k", "unknown GGUF")])
def test_bad_format_or_quant(fmt, quant, match):
    with pytest.raises(UserError, match=match) as err:
        check_format(fmt, quant)
    assert err.value.hint


def test_zero_samples_or_tokens_is_a_user_error(lora_run, tmp_path):
    with pytest.raises(UserError, match="at least 1 parity prompt"):
        run_export(lora_run, "hf", tmp_path, samples=0)


def test_run_without_artifact_fails_before_any_model_loads(tmp_path, tiny_llama):
    (tmp_path / "recipe.resolved.yaml").write_text(f"model:\n  name: {tiny_llama}\n")
    with pytest.raises(UserError, match="neither adapter/ nor model/"):
        run_export(tmp_path, "hf", tmp_path / "out")


def test_gguf_of_an_unsupported_architecture_fails_with_a_fix(run_factory, tiny_deepseek_v3, tmp_path):
    with pytest.raises(UserError, match="supports llama and qwen2") as err:
        run_export(run_factory(tiny_deepseek_v3), "gguf", tmp_path, "q8_0")
    assert "--format hf" in err.value.hint and not (tmp_path / "export_report.json").exists()


def test_unmergeable_method_points_at_adapter_export(run_factory, tiny_llama, tmp_path):
    with pytest.raises(UserError, match="cannot be merged"):
        run_export(run_factory(tiny_llama, "prompt"), "int8", tmp_path)
