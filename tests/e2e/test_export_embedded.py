"""Export a LoRA run on the real embedded model (SmolLM2-135M-Instruct): hf merge and gguf q8_0 round trip.

Run with: pytest -m e2e tests/e2e/test_export_embedded.py -s (prints the report tables).
Budget: about 90 s on 2 idle CPU cores once the model is converted.

Why the q8_0 thresholds are what they are (measured on this model, teacher-forced over 2,782
positions of 40 bundled ICD-10 chats): any 8-bit rounding of SmolLM2-135M's weights moves its
logits by ~0.19 on average, and 3% of positions are near-ties (top-2 gap < 0.05 logits), so top-1
agreement over all positions is 96.8% for Q8_0 (96.2% for per-row int8, 99.5% for bf16, 99.9% for
f16). Where the fp32 model prefers its token by at least 0.1 logit, Q8_0 agrees on 99.6%. So this
test asks for >= 99% on those confident positions and >= 95% on all of them.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from domaintune.api import bundled_dataset
from domaintune.config import LoraOptions
from domaintune.export.run import run_export
from domaintune.export.source import load_tuned, open_run
from domaintune.methods import get_method
from domaintune.models.load import load_model

pytestmark = pytest.mark.e2e
TIME_LIMIT_S = 300
SAMPLE_TEXTS = ["In ICD-10-CM, which chapter covers \"Other chromosome abnormalities\"?",
                "Hello, 世界! 12345 tabs\tand  spaces",
                "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]


@pytest.fixture(scope="module")
def embedded_run(embedded_model_dir, tmp_path_factory):
    """A run folder with a LoRA adapter whose B matrices are small random values (a stand-in for training)."""
    run = tmp_path_factory.mktemp("embedded_run")
    (run / "recipe.resolved.yaml").write_text("model:\n  name: embedded\n  template: auto\n", encoding="utf-8")
    torch.manual_seed(0)
    model = get_method("lora").apply(load_model(embedded_model_dir), LoraOptions(r=8, alpha=16))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    get_method("lora").save(model, run / "adapter")
    return run


@pytest.fixture(scope="module")
def records():
    rows = [json.loads(line) for line in bundled_dataset().read_text(encoding="utf-8").splitlines()]
    return rows[-8:]


def test_hf_merge_loads_in_plain_transformers_with_the_same_logits(embedded_run, records, tmp_path):
    start = time.perf_counter()
    report = run_export(embedded_run, "hf", tmp_path, eval_records=records, samples=4, max_new_tokens=16)
    print(f"\n{report.to_markdown()}\nhf export: {time.perf_counter() - start:.1f} s")
    assert report.parity_ok  # same prompt ids, identical greedy continuations
    ids = torch.tensor([AutoTokenizer.from_pretrained(str(tmp_path))(SAMPLE_TEXTS[0])["input_ids"]])
    with torch.inference_mode():
        plain = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()(input_ids=ids).logits
        tuned = load_tuned(open_run(embedded_run))(input_ids=ids).logits
    assert (plain - tuned).abs().max().item() < 1e-4
    assert time.perf_counter() - start < TIME_LIMIT_S


def test_gguf_q8_0_round_trip(embedded_run, embedded_model_dir, records, tmp_path):
    start = time.perf_counter()
    report = run_export(embedded_run, "gguf", tmp_path, "q8_0", records, samples=8, max_new_tokens=32)
    print(f"\n{report.to_markdown()}\ngguf export: {time.perf_counter() - start:.1f} s")
    exported = report.variants[-1]
    assert all(row.ids_equal for row in report.parity)  # the GGUF tokenizer + chat template give training's ids
    assert exported.top1_confident >= 0.99 and exported.top1_agreement >= 0.95
    assert exported.size_bytes < 0.3 * report.variants[0].size_bytes  # 145 MB against 548 MB of fp32 + adapter
    gguf_tok = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file="model.gguf")
    base_tok = AutoTokenizer.from_pretrained(str(embedded_model_dir))
    for text in SAMPLE_TEXTS:
        want = base_tok(text, add_special_tokens=False)["input_ids"]
        assert gguf_tok(text, add_special_tokens=False)["input_ids"] == want
    modelfile = (tmp_path / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # `template: auto` is plain ChatML for the embedded model (what the demo trains with): no default system
    # turn, so no SYSTEM line (tests/unit/export/test_ollama.py covers SmolLM2's own template, which has one).
    assert "SYSTEM" not in modelfile
    assert time.perf_counter() - start < TIME_LIMIT_S
