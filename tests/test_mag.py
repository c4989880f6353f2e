"""Max-Gram: prompt max-gram, then sequence max-gram, then bigram; the table's formats."""

import json

import numpy as np
import pytest

from csdlib import BigramTable, MaG, MissingFileError

V = 50


def table(pairs=(), default=0):
    """A table whose next[a] = b for the given pairs and `default` elsewhere."""
    nxt = [default] * V
    for a, b in pairs:
        nxt[a] = b
    return BigramTable(nxt, default=default)


def test_prompt_match_is_copied():
    mag = MaG(table(), k=3)
    assert mag.draft([1, 2, 3, 4, 5, 6], [40, 41, 2, 3]) == [4, 5, 6]


def test_longest_suffix_wins_over_earlier_shorter_match():
    mag = MaG(table(), k=2)
    prompt = [9, 3, 7, 8, 1, 3, 6, 5]
    # suffix [3] first occurs at index 1 (-> 7, 8); the longer suffix [1, 3] occurs at 4 (-> 6, 5)
    assert mag.draft(prompt, [20, 1, 3]) == [6, 5]
    assert mag.draft(prompt, [20, 2, 3]) == [7, 8]


def test_earliest_occurrence_of_longest_match():
    mag = MaG(table(), k=1)
    assert mag.draft([4, 10, 4, 11, 4], [30, 4]) == [10]


def test_short_prompt_continuation_then_generated_text_then_bigram():
    # prompt gives [7] only (its end), then the sequence [.. 7] is searched in itself, then bigram
    mag = MaG(table([(13, 14), (14, 15)]), k=6)
    seq = [30, 7, 12, 13, 30, 6]
    # prompt: suffix [6] -> [7] (end of prompt); seq+[7]: suffix [6, 7]... [30, 6, 7]? only [7] at 1 -> 12, 13, 30, 6
    assert mag.draft([5, 6, 7], seq) == [7, 12, 13, 30, 6, 7]


def test_generated_text_match_when_prompt_has_none():
    mag = MaG(table(), k=3)
    assert mag.draft([90 % V, 91 % V], [10, 11, 12, 10, 11]) == [12, 10, 11]


def test_bigram_fallback_chain():
    mag = MaG(table([(3, 8), (8, 9), (9, 3)]), k=5)
    assert mag.draft([1, 2], [3]) == [8, 9, 3, 8, 9]


def test_sequence_does_not_match_its_own_end_or_duplicated_prompt():
    # decoder-only start: the sequence *is* the prompt. The seed's code matched the prompt against its
    # own copy and proposed the prompt's beginning again; only occurrences with a continuation count.
    mag = MaG(table([(4, 40)], default=41), k=3)
    prompt = [1, 2, 3, 4]
    assert mag.draft(prompt, prompt) == [40, 41, 41]


def test_draft_returns_exactly_k():
    rng = np.random.default_rng(0)
    mag = MaG(BigramTable(rng.integers(0, V, V)), k=7)
    for _ in range(50):
        prompt = rng.integers(0, 5, rng.integers(1, 20)).tolist()
        seq = rng.integers(0, 5, rng.integers(1, 30)).tolist()
        k = int(rng.integers(1, 12))
        assert len(mag.draft(prompt, seq, k=k)) == k
        assert len(mag.draft(prompt, seq)) == 7


def test_from_sequences_most_frequent_successor_ties_lowest_id_default_most_frequent():
    t = BigramTable.from_sequences([[1, 5, 1, 4, 1, 5], [2, 7, 2, 6]], vocab_size=10)
    assert t[1] == 5          # 5 follows 1 twice, 4 once
    assert t[2] == 6          # 6 and 7 once each: lowest id
    assert t[5] == 1
    assert t.default == 1     # the most frequent token
    assert t[9] == 1          # never seen: the default
    assert t.vocab_size == 10


def test_from_sequences_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="sequences"):
        BigramTable.from_sequences([[1, 10]], vocab_size=10)


def test_save_load_round_trip(tmp_path):
    t = BigramTable.from_sequences([np.arange(30) % 7], vocab_size=V)
    t.save(tmp_path / "t.json")
    u = BigramTable.load(tmp_path / "t.json", vocab_size=V)
    assert u.next.tolist() == t.next.tolist() and u.default == t.default


def test_load_seed_format(tmp_path):
    seed = list(range(1, V)) + [0]          # the seed's files: a JSON list of next-token ids
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    t = BigramTable.load(tmp_path / "seed.json")
    assert t.next.tolist() == seed and t[3] == 4
    assert MaG(tmp_path / "seed.json", k=2).draft([0], [10]) == [11, 12]


def test_load_missing_corrupt_and_wrong_vocab(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        BigramTable.load(tmp_path / "nope.json")
    assert issubclass(MissingFileError, ValueError)
    (tmp_path / "bad.json").write_text("[1, 2,")
    with pytest.raises(ValueError, match="not valid JSON"):
        BigramTable.load(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        BigramTable.load(tmp_path / "obj.json")
    (tmp_path / "range.json").write_text("[0, 1, 7]")
    with pytest.raises(ValueError, match=r"token id in \[0, 3\)"):
        BigramTable.load(tmp_path / "range.json")
    (tmp_path / "str.json").write_text('[0, "a"]')
    with pytest.raises(ValueError, match="integer token ids"):
        BigramTable.load(tmp_path / "str.json")
    (tmp_path / "ok.json").write_text(json.dumps([0] * 10))
    with pytest.raises(ValueError, match="vocab_size 10, expected 12"):
        BigramTable.load(tmp_path / "ok.json", vocab_size=12)


def test_mag_rejects_bad_k():
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k:"):
            MaG(table(), k=k)
