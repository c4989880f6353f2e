"""Spec-Bench's loader (groups, evenly spaced picks, errors naming the file) and its multi-turn prompts
through a chat template. The questions are read from $CSD_DATA_DIR/spec_bench/ (CI) or a file written here."""

import json

import pytest

from csdlib import zoo
from csdlib.datasets import SPEC_BENCH_GROUPS, load_spec_bench, spec_bench_file
from csdlib.errors import CSDValueError, MissingFileError


def write_bench(folder, per_category=3):
    """A Spec-Bench-shaped file: `per_category` rows of every category, two turns for MT-bench's."""
    rows, qid = [], 0
    for group, cats in SPEC_BENCH_GROUPS.items():
        for cat in cats:
            for _ in range(per_category):
                qid += 1
                turns = [f"q{qid} first", f"q{qid} second"] if group == "Multi-turn Conversation" else [f"q{qid}"]
                rows.append({"question_id": qid, "category": cat, "turns": turns})
    (folder / "spec_bench").mkdir()
    (folder / "spec_bench" / "question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def test_the_groups_in_file_order(tmp_path):
    rows = write_bench(tmp_path)
    got = load_spec_bench(data_dir=tmp_path)
    assert [r["question_id"] for r in got] == [r["question_id"] for r in rows]
    assert {r["group"] for r in got} == set(SPEC_BENCH_GROUPS)
    assert all(len(r["turns"]) == (2 if r["group"] == "Multi-turn Conversation" else 1) for r in got)


def test_per_category_picks_evenly_across_a_group(tmp_path):
    write_bench(tmp_path)                                  # MT-bench: 8 categories x 3 rows = 24
    mt = load_spec_bench(["mt-bench"], per_category=8, data_dir=tmp_path)
    assert len(mt) == 8 and len({r["category"] for r in mt}) == 8     # one of each, not the first 8
    got = load_spec_bench(["rag", "qa"], per_category=2, data_dir=tmp_path)
    assert [r["group"] for r in got] == ["QA", "QA", "RAG", "RAG"]
    assert len(load_spec_bench(["rag"], per_category=50, data_dir=tmp_path)) == 3     # all there are
    assert load_spec_bench("rag, qa", per_category=2, data_dir=tmp_path) == got       # as --categories says it
    assert load_spec_bench("all", data_dir=tmp_path) == load_spec_bench(data_dir=tmp_path)


def test_bad_arguments_and_a_missing_file_are_named(tmp_path, monkeypatch):
    with pytest.raises(MissingFileError, match=r"Spec-Bench not found: looked for .*spec_bench/question\.jsonl.*hemingkx/Spec-Bench"):
        load_spec_bench(data_dir=tmp_path)
    write_bench(tmp_path)
    with pytest.raises(CSDValueError, match=r"^categories: expected some of \['mt-bench'"):
        load_spec_bench(["poetry"], data_dir=tmp_path)
    with pytest.raises(CSDValueError, match="^per_category: expected at least 1, got 0"):
        load_spec_bench(per_category=0, data_dir=tmp_path)
    monkeypatch.setenv("CSD_DATA_DIR", str(tmp_path))
    assert spec_bench_file() == (tmp_path / "spec_bench" / "question.jsonl").resolve()


def test_the_real_file_has_spec_benchs_480_questions():
    rows = load_spec_bench()                               # $CSD_DATA_DIR or ../shared/datasets
    assert len(rows) == 480
    by_group = {g: sum(r["group"] == g for r in rows) for g in SPEC_BENCH_GROUPS}
    assert set(by_group.values()) == {80}
    assert all(len(r["turns"]) == 2 for r in rows if r["group"] == "Multi-turn Conversation")


class ChatTokenizer:
    """A character-level tokenizer with a ChatML template (SmolLM2's layout), for Family.encode_turns."""
    chat_template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}<|assistant|>"

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in messages) + "<|assistant|>"
        return [ord(c) for c in text]

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def family(chat: bool):
    return zoo.Family("f", None, ChatTokenizer(), None, [], [], 1.0, chat=chat)


def test_the_second_turn_holds_the_first_turn_and_the_models_own_answer():
    ids = family(chat=True).encode_turns(["Write a poem.", "Now shorter."], ["Roses are red."])
    assert "".join(map(chr, ids)) == "<|user|>Write a poem.\n<|assistant|>Roses are red.\n<|user|>Now shorter.\n<|assistant|>"
    assert family(chat=True).encode_turns(["Hi."], []) == family(chat=True).encode("Hi.")
    assert "".join(map(chr, family(chat=False).encode_turns(["a", "b"], ["A"]))) == "a\nA\nb"
    with pytest.raises(CSDValueError, match="^answers: expected 1 .one per turn but the last., got 0"):
        family(chat=True).encode_turns(["a", "b"], [])
