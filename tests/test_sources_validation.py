"""Prompt-source validation: missing columns, empty and duplicate prompts, length limits, chat messages, and every
file kind (JSONL, CSV, JSON array, Parquet and a Hub-style folder through ``datasets``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mrlite.data.sources import SourceError, load_prompt_pool, validation_table


def _jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "First question?"},
        {"role": "assistant", "content": "An answer."}, {"role": "user", "content": "Second question?"}]

# (case, rows, kwargs, expected prompts, expected counts)
TABLE = [
    ("plain", [{"prompt": "a b"}, {"prompt": "c d"}], {}, ["a b", "c d"], {"rows": 2}),
    ("empty prompts", [{"prompt": ""}, {"prompt": "   "}, {"prompt": None}, {"prompt": "ok"}], {}, ["ok"],
     {"empty": 3}),
    ("duplicates after normalising", [{"prompt": "Hello  World"}, {"prompt": "hello world\n"}, {"prompt": "x"}], {},
     ["Hello  World", "x"], {"duplicates": 1}),
    ("over the char limit", [{"prompt": "short"}, {"prompt": "much too long here"}], {"max_chars": 10}, ["short"],
     {"too_long": 1}),
    ("chat messages under the default column", [{"messages": CHAT}], {}, ["First question?"], {}),
    ("chat messages named", [{"conversation": CHAT}], {"column": "conversation"}, ["First question?"], {}),
    ("chat without a user turn is empty", [{"messages": CHAT[:1]}, {"messages": CHAT}], {}, ["First question?"],
     {"empty": 1}),
    ("column mapping", [{"instruction": "Do it.", "prompt": "ignored"}], {"column": "instruction"}, ["Do it."], {}),
]


@pytest.mark.parametrize("case,rows,kw,prompts,counts", TABLE, ids=[t[0] for t in TABLE])
def test_validation_table(tmp_path, case, rows, kw, prompts, counts):
    pool = load_prompt_pool(_jsonl(tmp_path / "p.jsonl", rows), **kw)
    assert pool.prompts == prompts
    for k, v in counts.items():
        assert pool.stats[k] == v
    table = dict(validation_table(pool))
    assert table["prompts kept"] == len(prompts) and table["rows read"] == len(rows)


@pytest.mark.parametrize("rows,kw,needle", [
    ([{"text": "a", "id": 1}], {}, "no column 'prompt'; columns are text, id; set data.column"),
    ([{"prompt": "a"}], {"column": "question"}, "no column 'question'; columns are prompt"),
    ([{"prompt": 3}], {}, "holds int, expected text"),
    ([{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}], {}, "duplicate id 'x'"),
    ([{"prompt": ""}], {}, "no usable prompt left"),
])
def test_structural_errors_are_one_line(tmp_path, rows, kw, needle):
    with pytest.raises(SourceError) as e:
        load_prompt_pool(_jsonl(tmp_path / "p.jsonl", rows), **kw)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_missing_source_says_what_was_tried(tmp_path):
    with pytest.raises(SourceError, match=r"not found: tried a local file or folder .* and a Hub dataset id"):
        load_prompt_pool(str(tmp_path / "nope.jsonl"))


def test_csv_and_json_array(tmp_path):
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, ["question"])
        w.writeheader()
        w.writerows([{"question": "Why?"}, {"question": "why?"}, {"question": "How?"}])
    pool = load_prompt_pool(str(tmp_path / "p.csv"), column="question")
    assert pool.prompts == ["Why?", "How?"] and pool.stats["duplicates"] == 1
    (tmp_path / "alpaca.json").write_text(json.dumps([{"instruction": "Name a colour.", "dataset": "x"}]))
    assert load_prompt_pool(str(tmp_path / "alpaca.json"), column="instruction").prompts == ["Name a colour."]


def test_parquet_file_and_hub_style_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"prompt": "One?", "id": "a"}, {"prompt": "one? ", "id": "b"},
                                     {"prompt": "Two?", "id": "c"}])
    ds.to_parquet(str(tmp_path / "p.parquet"))
    pool = load_prompt_pool(str(tmp_path / "p.parquet"))
    assert pool.ids == ["a", "c"] and pool.stats["duplicates"] == 1
    # A folder laid out like a Hub dataset goes through the same datasets.load_dataset call as a Hub id.
    hub = tmp_path / "owner_name"
    (hub / "data").mkdir(parents=True)
    ds.to_parquet(str(hub / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list([{"prompt": "Held out?"}]).to_parquet(str(hub / "data" / "test-00000-of-00001.parquet"))
    assert load_prompt_pool(str(hub)).prompts == ["One?", "Two?"]
    assert load_prompt_pool(str(hub), split="test").prompts == ["Held out?"]
    with pytest.raises(SourceError, match="split 'validation'"):
        load_prompt_pool(str(hub), split="validation")
