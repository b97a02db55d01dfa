"""A prepared folder with a closed-set (labelled) task and a recipe for the tiny LLaMA, for api tests."""

from __future__ import annotations

import json
import random

import pytest

from domaintune.config import Recipe

LABELS = ["cardiology", "neurology", "oncology"]
WORDS = {"cardiology": ["heart", "valve", "artery"], "neurology": ["brain", "nerve", "seizure"],
         "oncology": ["tumor", "cancer", "lymphoma"]}


def labelled_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        label = rng.choice(LABELS)
        text = f"The patient has {rng.choice(WORDS[label])} trouble."
        out.append({"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": label}],
                    "metadata": {"label": label}})
    return out


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    for name, n, seed in (("train", 60, 0), ("val", 12, 1), ("test", 12, 2)):
        rows = labelled_rows(n, seed)
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


@pytest.fixture
def make_recipe(tiny_llama, prepared, tmp_path):
    def make(**eval_overrides) -> Recipe:
        return Recipe(model={"name": str(tiny_llama), "template": "chatml"},
                      train={"data_dir": str(prepared), "output_dir": str(tmp_path / "run"), "max_steps": 4,
                             "batch_tokens": 128, "threads": 1, "val_samples": 8,
                             "method": {"method": "lora", "r": 4, "dropout": 0.0}},
                      eval={"data": str(prepared / "test.jsonl"), "output_dir": str(tmp_path / "eval"),
                            "label_field": "label", "general": None, "latency_prompts": 0, "perplexity": False,
                            **eval_overrides})
    return make
