"""The whole prepare pipeline: every row accounted for, on a messy file and on random inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domaintune import api
from domaintune.api import data as api_data
from domaintune.config import load_recipe
from domaintune.errors import UserError

ASSETS = Path(__file__).parents[2] / "assets"


def run(tmp_path: Path, inputs: list[dict], **prepare) -> tuple[dict, Path]:
    out = tmp_path / "out"
    recipe = load_recipe(None, base={"model": {"name": "none"},
                                     "prepare": {"inputs": inputs, "output_dir": str(out), **prepare}})
    return api.prepare(recipe, progress=False), out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line]


def fates(out: Path) -> dict[int, str]:
    """line -> where the row ended: a split name, 'reject:<reason>' or 'dup:<kind>'."""
    seen: dict[int, str] = {}
    for split in ("train", "val", "test"):
        for rec in read(out / f"{split}.jsonl"):
            seen[rec["metadata"]["origin"]["line"]] = split
    for rec in read(out / "rejects.jsonl"):
        seen[rec["line"]] = f"reject:{rec['reason']}"
    for rec in read(out / "duplicates.jsonl"):
        seen[rec["line"]] = f"dup:{rec['kind']}"
    return seen


def test_messy_file_every_row_has_its_expected_fate(tmp_path):
    expected = json.loads((ASSETS / "messy.expected.json").read_text())["rows"]
    report, out = run(tmp_path, [{"path": str(ASSETS / "messy.jsonl")}])
    got = fates(out)
    assert sorted(got) == [row["line"] for row in expected]
    for row in expected:
        fate = got[row["line"]]
        if row["status"] == "reject":
            assert fate == f"reject:{row['reason']}", row["intent"]
        elif any(t.startswith(("dup_of", "canonical_dup_of")) for t in row["tags"]):
            assert fate == "dup:exact", row["intent"]
        elif any(t.startswith("near_dup_of") for t in row["tags"]):
            assert fate == "dup:near", row["intent"]
        else:
            assert fate in ("train", "val", "test"), row["intent"]
    totals = report["totals"]
    assert totals["balanced"] and totals["rows_in"] == len(expected)
    assert totals["kept"] + totals["rejected"] + totals["duplicates"] == len(expected)


def test_messy_file_pii_masked_chinese_kept_injection_escaped(tmp_path):
    report, out = run(tmp_path, [{"path": str(ASSETS / "messy.jsonl")}])
    assert set(report["pii"]) == {"email", "phone", "cn_id", "bank_card", "ip"}
    text = "".join((out / f"{s}.jsonl").read_text(encoding="utf-8") for s in ("train", "val", "test"))
    for secret in ("11010519491231002X", "4111111111111111", "13812345678"):
        assert secret not in text
    assert "<PHONE>" in text or "<ID_CARD>" in text
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text)       # Chinese rows survive intact
    assert "<|im_start|>" not in text                           # the injected row was escaped
    assert report["role_injection"]["rows"] >= 1
    rejects = read(out / "rejects.jsonl")
    assert all({"source", "file", "line", "reason", "detail"} <= set(r) for r in rejects)
    assert all("raw" in r for r in rejects if r["reason"] in ("invalid_json", "invalid_utf8"))


def test_reject_mode_rejects_injection(tmp_path):
    report, _ = run(tmp_path, [{"path": str(ASSETS / "messy.jsonl")}], role_injection="reject")
    assert report["reject_reasons"].get("role_injection", 0) >= 1
    assert report["totals"]["balanced"]


def chat(i: int, answer: str = "", **meta) -> dict:
    return {"messages": [{"role": "user", "content": f"question number {i} about topic {i % 7}"},
                         {"role": "assistant", "content": answer or f"answer {i} " + "word " * (i % 5)}],
            **meta}


def write_jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def test_mix_ratios_and_downsampled_rows_go_to_rejects(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i, f"alpha reply {i} " * 3) for i in range(200)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat(1000 + i, f"beta response {i} " * 3) for i in range(50)])
    report, out = run(tmp_path, [{"path": a, "name": "general"}, {"path": b, "name": "domain"}],
                      mix={"ratios": {"general": 0.5, "domain": 0.5}}, dedup={"near": False})
    actual = report["mix"]["actual"]
    assert actual["general"] == actual["domain"] == report["mix"]["available"]["domain"]
    train = read(out / "train.jsonl")
    sources = [r["metadata"]["origin"]["source"] for r in train]
    assert sources.count("general") == sources.count("domain")
    assert report["reject_reasons"]["mix_downsampled"] == report["mix"]["available"]["general"] - actual["general"]
    assert report["totals"]["balanced"]


def test_over_sampling_copies_stay_in_train(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [chat(i, f"alpha reply {i} " * 3) for i in range(100)])
    b = write_jsonl(tmp_path / "b.jsonl", [chat(1000 + i, f"beta response {i} " * 3) for i in range(20)])
    report, out = run(tmp_path, [{"path": a, "name": "g"}, {"path": b, "name": "d"}],
                      mix={"ratios": {"g": 0.5, "d": 0.5}, "strategy": "over"}, dedup={"near": False})
    train_keys = {json.dumps(r["messages"]) for r in read(out / "train.jsonl")}
    held_out = {json.dumps(r["messages"]) for s in ("val", "test") for r in read(out / f"{s}.jsonl")}
    assert not train_keys & held_out
    assert report["split"]["rows"]["train"] > report["totals"]["kept"] - len(held_out)


def test_against_drops_eval_copies_as_contamination(tmp_path):
    rows = [chat(i, f"distinct answer text for item {i} with detail {i * 13}") for i in range(30)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    evalset = write_jsonl(tmp_path / "eval.jsonl", rows[:5])
    report, out = run(tmp_path, [{"path": data}], dedup={"against": [evalset]})
    assert report["duplicates"]["contamination"] == 5
    dups = read(out / "duplicates.jsonl")
    assert all(d["duplicate_of"].startswith(evalset) for d in dups)


def test_stratified_split_and_class_balance(tmp_path):
    rows = [chat(i, f"label answer {i} unique {i * 7}", label="A" if i % 4 else "B") for i in range(200)]
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    report, out = run(tmp_path, [{"path": data}], split={"stratify_by": "label"}, label_field="label",
                      dedup={"near": False})
    test_labels = [r["metadata"]["label"] for r in read(out / "test.jsonl")]
    assert test_labels.count("B") == 5 and test_labels.count("A") == 15
    balance = report["class_balance"]
    assert balance["counts"] == {"A": 120, "B": 40}
    assert balance["weights"]["B"] == pytest.approx(160 / (2 * 40))


def test_deterministic_under_seed(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(i) for i in range(100)])
    outs = []
    for name in ("x", "y"):
        recipe = load_recipe(None, base={"model": {"name": "none"}, "prepare": {
            "inputs": [{"path": data}], "output_dir": str(tmp_path / name), "seed": 3}})
        api.prepare(recipe, progress=False)
        outs.append((tmp_path / name / "train.jsonl").read_bytes())
    assert outs[0] == outs[1]


def test_long_text_is_chunked_and_counted(tmp_path):
    words = " ".join(f"w{i}" for i in range(500))
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": words}])
    report, out = run(tmp_path, [{"path": data}], chunk={"max_tokens": 100, "overlap": 10}, split={
        "train": 1.0, "val": 0.0, "test": 0.0})
    chunks = read(out / "train.jsonl")
    assert len(chunks) == report["totals"]["kept"] == 1 + report["totals"]["chunks_added"] > 1
    assert report["totals"]["balanced"]


def test_unknown_mix_source_is_a_user_error(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [chat(1)])
    with pytest.raises(UserError, match="unknown source"):
        run(tmp_path, [{"path": data}], mix={"ratios": {"nope": 1.0}})


LINES = st.one_of(
    st.builds(lambda i, a: json.dumps(chat(i, a)), st.integers(0, 30), st.sampled_from(["", "yes", "no", "yes"])),
    st.just('{"messages": [{"role": "tool", "content": "x"}]}'),
    st.just('{"instruction": "Say hi", "output": "hi"}'),
    st.just('{"text": "plain text for pretraining"}'),
    st.just("{not json"),
    st.just("[1, 2]"),
    st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s and s.strip()),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(LINES, min_size=1, max_size=40), seed=st.integers(0, 5))
def test_conservation_on_random_inputs(tmp_path_factory, lines, seed):
    tmp = tmp_path_factory.mktemp("prop")
    data = write_jsonl(tmp / "r.jsonl", lines)
    report, out = run(tmp, [{"path": data}], seed=seed)
    written_unique = sum(len(read(out / f"{s}.jsonl")) for s in ("train", "val", "test"))
    rejected = len(read(out / "rejects.jsonl"))
    dups = len(read(out / "duplicates.jsonl"))
    assert report["totals"]["rows_in"] == len(lines)
    assert written_unique + rejected + dups == len(lines)
    assert report["totals"]["balanced"]


def test_length_limit_stays_exact_when_lengths_are_sampled(tmp_path, monkeypatch):
    from domaintune.data import prepare as pipeline

    monkeypatch.setattr(pipeline, "EXACT_ROWS", 5)
    monkeypatch.setattr(pipeline, "SAMPLE_EVERY", 1000)
    rows = [chat(i, f"short reply {i}") for i in range(60)]
    rows[50] = chat(50, " ".join(f"long{i}" for i in range(600)))
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    counted: list[int] = []

    def count(records):                         # a word-count "tokenizer" that records its calls
        counted.append(len(records))
        return [len(pipeline.record_text(r).split()) for r in records]

    cfg = load_recipe(None, base={"prepare": {"inputs": [{"path": data}], "output_dir": str(tmp_path / "o"),
                                              "max_tokens": 500, "dedup": {"near": False}}}).prepare
    report = pipeline.prepare_data(cfg, api_data._row_processor(cfg, ()), count)
    assert report["reject_reasons"] == {"too_long": 1}
    assert sum(counted) == 5 + 1                # the exact head (rows 0-4) and the one that may be too long
    assert report["tokens"]["sampled"] is True
