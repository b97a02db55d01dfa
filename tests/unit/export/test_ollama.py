"""The Modelfile: FROM, the Go template, default system message, stop strings."""

from __future__ import annotations

from domaintune.export.ollama import ollama_name, write_modelfile
from domaintune.models.templates import get_template


def test_modelfile_for_chatml(tmp_path):
    path, notes = write_modelfile(tmp_path, "model.gguf", get_template("chatml"))
    text = path.read_text()
    assert text.startswith("FROM ./model.gguf\nTEMPLATE \"\"\"{{ range .Messages }}<|im_start|>{{ .Role }}\n")
    assert 'PARAMETER stop "<|im_end|>"\nPARAMETER stop "<|endoftext|>"\n' in text
    assert "SYSTEM" not in text and notes == []


def test_r1_notes_that_history_keeps_reasoning(tmp_path):
    path, notes = write_modelfile(tmp_path, "m.gguf", get_template("deepseek_r1"))
    assert 'PARAMETER stop "<｜end▁of▁sentence｜>"' in path.read_text() and "<think>" in notes[0]


def test_ollama_names():
    assert ollama_name("My Run #2") == "my-run-2" and ollama_name("___") == "___" and ollama_name("!!") == "domaintune"
