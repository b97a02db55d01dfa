"""PII masking covers everything prepare writes: metadata in the splits, rejects and duplicates."""

from __future__ import annotations

import json
from pathlib import Path

from domaintune import api
from domaintune.config import load_recipe

EMAIL, PHONE, ID = "zhang.san@example.com", "13812345678", "11010519491231002X"


def run(tmp_path: Path, inputs: list[dict], **prepare) -> tuple[dict, Path]:
    out = tmp_path / "out"
    recipe = load_recipe(None, base={"model": {"name": "none"},
                                     "prepare": {"inputs": inputs, "output_dir": str(out), **prepare}})
    return api.prepare(recipe, progress=False), out


def everything(out: Path) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted(out.iterdir()) if p.is_file())


def write_csv(tmp_path: Path) -> str:
    path = tmp_path / "patients.csv"
    rows = ["question,answer,patient_email,phone,ward",
            f"What dose of drug {{i}}?,Give {{i}} mg twice a day.,{EMAIL},{PHONE},{{i}}"]
    body = "".join(rows[1].replace("{i}", str(i)) + "\n" for i in range(12))
    path.write_text(rows[0] + "\n" + body, encoding="utf-8")
    return str(path)


def test_extra_csv_columns_in_metadata_are_masked(tmp_path):
    report, out = run(tmp_path, [{"path": write_csv(tmp_path), "columns": {"question": "instruction",
                                                                           "answer": "output"}}],
                      dedup={"near": False})
    records = [json.loads(line) for s in ("train", "val", "test")
               for line in (out / f"{s}.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert len(records) == 12
    assert {r["metadata"]["patient_email"] for r in records} == {"<EMAIL>"}
    assert {r["metadata"]["phone"] for r in records} == {"<PHONE>"}
    assert {r["metadata"]["ward"] for r in records} == {str(i) for i in range(12)}
    assert EMAIL not in everything(out) and PHONE not in everything(out)
    assert report["pii"] == {"email": 12, "phone": 12}


def test_nested_and_numeric_metadata_leaves_are_masked(tmp_path):
    row = {"instruction": "hi", "output": "hello", "contact": {"mail": [EMAIL, {"id": ID}], "tel": int(PHONE)},
           "age": 54, "ok": True}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row) + "\n", encoding="utf-8")
    _, out = run(tmp_path, [{"path": str(data)}], split={"train": 1.0, "val": 0.0, "test": 0.0})
    meta = json.loads((out / "train.jsonl").read_text(encoding="utf-8"))["metadata"]
    assert meta["contact"] == {"mail": ["<EMAIL>", {"id": "<ID_CARD>"}], "tel": "<PHONE>"}
    assert meta["age"] == 54 and meta["ok"] is True


def test_drop_switch_removes_extra_metadata_but_keeps_the_label(tmp_path):
    _, out = run(tmp_path, [{"path": write_csv(tmp_path), "columns": {"question": "instruction", "answer": "output"}}],
                 pii={"metadata": "drop"}, label_field="ward", split={"train": 1.0, "val": 0.0, "test": 0.0},
                 dedup={"near": False})
    records = [json.loads(line) for line in (out / "train.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert records and all(set(r["metadata"]) == {"ward", "origin"} for r in records)
    assert EMAIL not in everything(out)


def write_messy(tmp_path: Path) -> str:
    rows = [
        {"messages": [{"role": "user", "content": f"mail me at {EMAIL}"}, {"role": "user", "content": "x"}]},
        f'{{"text": "broken json with {PHONE}"',
        {"instruction": "Call me?", "output": f"call {PHONE}", "patient_email": EMAIL},
        {"instruction": "Call me?", "output": f"call {PHONE}", "patient_email": EMAIL},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_rejects_and_duplicates_are_masked_by_default(tmp_path):
    report, out = run(tmp_path, [{"path": write_messy(tmp_path)}])
    assert report["totals"]["rejected"] == 2 and report["totals"]["duplicates"] == 1
    rejects = (out / "rejects.jsonl").read_text(encoding="utf-8")
    dups = (out / "duplicates.jsonl").read_text(encoding="utf-8")
    for secret in (EMAIL, PHONE):
        assert secret not in rejects and secret not in dups
    assert "<EMAIL>" in rejects and "<PHONE>" in rejects and "<EMAIL>" in dups
    assert all("raw" in json.loads(line) for line in rejects.split("\n") if line)


def test_rejects_raw_flag_keeps_the_raw_text(tmp_path):
    _, out = run(tmp_path, [{"path": write_messy(tmp_path)}], rejects_raw=True)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").split("\n") if line]
    assert any(EMAIL in r["raw"] for r in rejects) and any(PHONE in r["raw"] for r in rejects)
    assert PHONE not in (out / "duplicates.jsonl").read_text(encoding="utf-8")
