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


def test_from_sequences_keeps_the_n_best_successors_most_frequent_first():
    """The n-best row of each token, checked against a plain count of the pairs (ties: lowest id)."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(0, 12, int(rng.integers(1, 40))).tolist() for _ in range(30)]
    t = BigramTable.from_sequences(seqs, vocab_size=15, n_best=3)
    assert t.n_best == 3 and t.top.shape == (15, 3)
    for a in range(15):
        counts = {}
        for s in seqs:
            for x, y in zip(s, s[1:]):
                if x == a:
                    counts[y] = counts.get(y, 0) + 1
        expected = sorted(counts, key=lambda y: (-counts[y], y))[:3]
        assert t.successors(a, 3) == (expected or [t.default])
        assert t.successors(a, 1) == [t[a]]
    small = BigramTable.from_sequences([[1, 5, 1, 4, 1, 5, 1, 3]], vocab_size=10)
    assert small.successors(1, 4) == [5, 3, 4]          # 5 twice; 3 and 4 once: lowest id first
    assert small.successors(1, 2) == [5, 3]
    with pytest.raises(ValueError, match="n_best"):
        BigramTable.from_sequences([[1, 2]], vocab_size=3, n_best=0)


def test_a_table_without_top_gives_one_successor_and_bad_tops_are_refused():
    t = table([(3, 8)])
    assert t.top is None and t.n_best == 1 and t.successors(3, 4) == [8]
    nxt = [1, 2, 0]
    assert BigramTable(nxt, top=[[1, 2], [], [0]]).successors(1, 3) == [2]   # unseen: next
    for top, match in [([[2], [2], [0]], "first successor"), ([[1], [2]], "one row"),
                       ([[1, 3], [2], [0]], "token id in"), ("x", "one list"), ([[1, True], [2], [0]], "one list")]:
        with pytest.raises(ValueError, match=match):
            BigramTable(nxt, top=top)
    with pytest.raises(ValueError, match="pad the end"):
        BigramTable(nxt, top=np.array([[-1, 2], [2, -1], [0, -1]]))


def test_from_sequences_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="sequences"):
        BigramTable.from_sequences([[1, 10]], vocab_size=10)


def test_save_load_round_trip(tmp_path):
    t = BigramTable.from_sequences([np.arange(30) % 7], vocab_size=V)
    t.save(tmp_path / "t.json")
    u = BigramTable.load(tmp_path / "t.json", vocab_size=V)
    assert u.next.tolist() == t.next.tolist() and u.default == t.default
    assert u.top.tolist() == t.top.tolist() and json.loads((tmp_path / "t.json").read_text())["version"] == 2
    BigramTable(t.next, default=t.default).save(tmp_path / "v1.json")      # version 1: no top
    v1 = BigramTable.load(tmp_path / "v1.json")
    assert v1.top is None and json.loads((tmp_path / "v1.json").read_text())["version"] == 1


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
    (tmp_path / "top.json").write_text(json.dumps({"format": "csdlib.bigram", "next": [1, 0], "top": [[1], "a"]}))
    with pytest.raises(ValueError, match=r"top\.json'.*one list of integer token ids per token"):
        BigramTable.load(tmp_path / "top.json")


def test_mag_rejects_bad_k():
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k:"):
            MaG(table(), k=k)


# ---------------------------------------------------------------- draft size: sized by the k-matrix vs seed mode


def test_propose_sized_by_need_at_most_k_and_seed_mode_always_k():
    rng = np.random.default_rng(1)
    prompt, seq = rng.integers(0, 6, 30).tolist(), rng.integers(0, 6, 12).tolist()
    sized, seed = MaG(table([(3, 8)]), k=4), MaG(table([(3, 8)]), k=4, seed_mode=True)
    for m in (sized, seed):
        m.start(prompt)
    for need in (1, 2, 4, 7):
        tokens, q = sized.propose(seq, need)
        assert tokens == sized.draft(prompt, seq, k=min(need, 4)) and q == [1.0] * len(tokens)
        assert seed.propose(seq, need)[0] == seed.draft(prompt, seq, k=4)
    assert sized.propose(seq, 0) == ([], []) and sized.calls == 4       # nothing asked: no call
    assert seed.calls == 4
    assert "seed_mode=True" in repr(seed) and "seed_mode" not in repr(sized)
    with pytest.raises(ValueError, match="seed_mode"):
        MaG(table(), k=2, seed_mode="yes")


def _sd_mag(mag, k_entry, max_new_tokens=40):
    import csdlib
    import tiny

    target = csdlib.HFModel(tiny.llama(0), name="target")
    prompt = ([5, 6, 7, 8] * 6)[:21]
    return csdlib.generate(target, [mag], prompt, k_matrix=[[k_entry]], max_new_tokens=max_new_tokens), \
        tiny.hf_greedy(target.model, prompt, max_new_tokens)[0].tolist()[21:]


def test_cascade_drafts_what_the_k_matrix_asks_in_both_modes():
    tbl = BigramTable([(t + 1) % 96 for t in range(96)])     # the tiny models' vocabulary
    sized, ref = _sd_mag(MaG(tbl, k=10), 3)
    seed, _ = _sd_mag(MaG(tbl, k=10, seed_mode=True), 3)
    assert sized.new_tokens == seed.new_tokens == ref                      # lossless either way
    lv_sized, lv_seed = sized.stats.levels[0], seed.stats.levels[0]
    assert len(lv_sized.drafted_per_position) == 3                     # never more than the entry
    assert len(lv_seed.drafted_per_position) == 10                     # the seed's 10 per call
    assert sized.stats.calls["mag"] == lv_sized.drafted_per_position[0]   # one call per draft


def test_entry_larger_than_k_takes_several_calls():
    tbl = BigramTable([(t + 1) % 96 for t in range(96)])     # the tiny models' vocabulary
    out, ref = _sd_mag(MaG(tbl, k=2), 5, max_new_tokens=30)
    assert out.new_tokens == ref
    lv = out.stats.levels[0]
    assert len(lv.drafted_per_position) == 5
    assert out.stats.calls["mag"] >= 3 * (lv.drafted_per_position[4])   # ceil(5 / 2) calls per full draft


def test_compat_mag_is_in_seed_mode_and_modes_fingerprint_apart(tmp_path):
    from csdlib.protocol import fingerprint
    from csdlib.compat import get_mag_model

    (tmp_path / "t.json").write_text(json.dumps(list(range(1, V)) + [0]))
    mag = get_mag_model(tmp_path / "t.json")
    assert mag.seed_mode and mag.k == 10
    assert fingerprint(mag) != fingerprint(MaG(mag.table, k=10))
    assert fingerprint(mag) == fingerprint(MaG(mag.table, k=10, seed_mode=True))


def test_alternatives_are_other_continuations_best_first():
    """Tree drafts ask MaG for its other candidates: the longest prompt match's continuations (earliest
    first), then shorter matches', then the sequence's own matches, then the bigram successor; the first
    is what MaG proposes; each call counts."""
    mag = MaG(table([(3, 44)]), k=2)
    prompt = [9, 3, 7, 8, 1, 3, 6, 5, 3, 2]
    mag.start(prompt)
    seq = [20, 1, 3]
    assert mag.draft(prompt, seq, k=1) == [6]
    # [1, 3] is followed by 6; [3] alone by 7, 6, 2; then the bigram table's 44
    assert mag.alternatives(seq, 5) == [6, 7, 2, 44]
    assert mag.alternatives(seq, 2) == [6, 7]
    assert mag.alternatives([20, 11, 12, 11], 3) == [12, 0]   # the sequence's own match, then the bigram's default
    assert mag.calls == 3
    mag.start([])
    assert mag.alternatives([], 3) == []


def test_alternatives_end_with_the_tables_n_best_successors():
    """After the max-gram candidates, MaG offers the bigram table's n most frequent successors; a
    table's `top` is part of MaG's fingerprint (it changes what trees verify)."""
    from csdlib.protocol import fingerprint

    t = BigramTable.from_sequences([[3, 9, 3, 9, 3, 7, 3, 8, 3, 7, 3, 9]], vocab_size=V)
    assert t.successors(3, 4) == [9, 7, 8]
    mag = MaG(t, k=2)
    mag.start([1, 2])
    assert mag.alternatives([5, 3], 4) == [9, 7, 8]                 # no max-gram match: the bigram's three
    assert mag.alternatives([3, 7, 5, 3], 4) == [7, 9, 8]           # the sequence's own match first
    assert fingerprint(mag) != fingerprint(MaG(BigramTable(t.next, default=t.default), k=2))


def test_a_tree_over_mag_drafts_branches_at_its_other_candidates():
    """SD(MaG) with a tree: MaG's other candidates become branches the target can take (rank 2), and
    the output stays the target's greedy output."""
    import torch

    import csdlib
    from csdlib import HFModel, Tree
    from tiny import VOCAB, llama

    target = HFModel(llama(0), name="t")
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, 8, (200,), generator=g).tolist()      # a small alphabet: many repeats
    mag = MaG(BigramTable.from_sequences([text], VOCAB), k=3)
    prompt = text[:40]
    ar = csdlib.generate(target, [], prompt, max_new_tokens=40)
    out = csdlib.generate(target, [mag], prompt, k_matrix=[[3]], max_new_tokens=40, tree=Tree([[3, 3, 3]]))
    assert out.new_tokens == ar.new_tokens
    ranks = out.stats.levels[0].accepted_by_rank
    assert sum(row[1] + row[2] for row in ranks if len(row) > 2) > 0           # branches were taken
    assert any(r > 1 for t in out.trees for r in t["ranks"])


def test_fill_false_proposes_only_what_it_copies():
    tbl = table([(3, 8), (8, 9)])
    mag = MaG(tbl, k=4, fill=False)
    assert mag.draft([1, 2, 3, 4, 5], [7, 2, 3], k=4) == [4, 5]              # the prompt's copy, no bigram fill
    assert mag.draft([1, 5], [9, 2, 3, 6, 2], k=4) == [3, 6, 2]               # the sequence's own copy
    assert mag.draft([1, 2], [5, 6, 7], k=4) == []                            # nothing to copy: nothing
    mag.start([1, 2])
    assert mag.propose([5, 6, 7], 3) == ([], []) and mag.calls == 1
    assert MaG(tbl, k=4).draft([1, 2], [5, 6, 7, 3], k=3) == [8, 9, 0]       # filled: exactly k
    assert "fill=False" in repr(mag) and "fill" not in repr(MaG(tbl, k=4))
    from csdlib.protocol import fingerprint
    assert fingerprint(mag) != fingerprint(MaG(tbl, k=4)) and fingerprint(mag) == fingerprint(MaG(tbl, k=4).copies_only())
    copy = MaG(tbl, k=3, name="m").copies_only()
    assert (copy.table, copy.k, copy.name, copy.fill) == (tbl, 3, "m", False)
    with pytest.raises(ValueError, match="^fill: expected True or False"):
        MaG(tbl, fill=1)
    with pytest.raises(ValueError, match="seed's MaG always proposes k tokens"):
        MaG(tbl, seed_mode=True, fill=False)


def test_copies_only_is_lossless_and_the_target_steps_alone_where_nothing_is_copied():
    """SD and a cascade over MaG(fill=False): exactly greedy's output; reviews with nothing drafted are
    plain one-token steps (more target calls than reviews of a draft), and sampling runs too."""
    import csdlib
    import tiny

    tbl = BigramTable([(t + 1) % 96 for t in range(96)])
    target, drafter = csdlib.HFModel(tiny.llama(0), name="target"), csdlib.HFModel(tiny.llama(1), name="d")
    for prompt in ([5, 6, 7, 8] * 6, list(range(10, 40))):                # copies to make, and none in the prompt
        ref = tiny.hf_greedy(target.model, prompt, 40)[0].tolist()[len(prompt):]
        sd = csdlib.generate(target, [MaG(tbl, k=4, fill=False)], prompt, k_matrix=[[4]], max_new_tokens=40)
        csd = csdlib.generate(target, [drafter, MaG(tbl, k=4, fill=False)], prompt, k_matrix=[[2, 3], [0, 2]],
                              max_new_tokens=40)
        assert sd.new_tokens == ref and csd.new_tokens == ref
        lv = sd.stats.levels[0]
        drafted_reviews = lv.drafted_per_position[0] if lv.drafted_per_position else 0
        assert sd.stats.calls["target"] >= drafted_reviews
        assert sd.stats.calls["target"] + lv.accepted == len(ref)               # each call: accepted + its own
    out = csdlib.generate(target, [MaG(tbl, k=4, fill=False)], list(range(10, 40)), k_matrix=[[4]],
                          max_new_tokens=20, do_sample=True, seed=3)
    assert len(out.new_tokens) == 20


def test_copy_k_lets_a_copy_run_longer_than_asked_and_fills_only_what_was_asked():
    tbl = table([(3, 8), (8, 9)])
    mag = MaG(tbl, k=3, copy_k=6)
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert mag.draft(prompt, [7, 2, 3], k=3) == [4, 5, 6, 7, 8, 9]            # the copy runs on to copy_k
    assert mag.draft(prompt, [7, 8, 9], k=3) == [10, 0, 0]                    # copied 1, filled up to k only
    assert mag.draft([1, 2], [5, 6, 7, 3], k=2) == [8, 9]                     # nothing copied: exactly k
    assert MaG(tbl, k=3, copy_k=2).draft(prompt, [7, 2, 3], k=3) == [4, 5, 6]  # copy_k below k: k
    assert mag.copies_only().draft(prompt, [7, 8, 9], k=3) == [10]            # with fill=False: copies only
    mag.start(prompt)
    assert mag.propose([0, 2, 3], 1) == ([4, 5, 6, 7, 8, 9], [1.0] * 6)        # more than the 1 asked
    assert "copy_k=6" in repr(mag) and MaG(tbl, k=3).copying(6).copy_k == 6
    from csdlib.protocol import fingerprint
    assert fingerprint(mag) != fingerprint(MaG(tbl, k=3)) == fingerprint(MaG(tbl, k=3, copy_k=None))
    assert fingerprint(mag) == fingerprint(MaG(tbl, k=3).copying(6))
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="^copy_k: expected None or a positive int"):
            MaG(tbl, copy_k=bad)
    with pytest.raises(ValueError, match="seed's MaG always proposes k tokens"):
        MaG(tbl, seed_mode=True, copy_k=10)


@pytest.mark.parametrize("do_sample", [False, True])
def test_long_copies_are_lossless_in_chains_cascades_and_trees(do_sample):
    """SD and cascades over MaG(copy_k=10) equal greedy's output (a tree too); sampling runs too, its
    draws equal to those of the same cascade without long copies (same seed, lossless both)."""
    import csdlib
    import tiny

    tbl = BigramTable([(t + 1) % 96 for t in range(96)])
    target, drafter = csdlib.HFModel(tiny.llama(0), name="target"), csdlib.HFModel(tiny.llama(1), name="d")
    for prompt in ([5, 6, 7, 8] * 6, list(range(10, 40))):
        long = MaG(tbl, k=3, copy_k=10)
        if not do_sample:
            ref = tiny.hf_greedy(target.model, prompt, 40)[0].tolist()[len(prompt):]
            sd = csdlib.generate(target, [long], prompt, k_matrix=[[3]], max_new_tokens=40)
            csd = csdlib.generate(target, [drafter, long], prompt, k_matrix=[[2, 3], [0, 2]], max_new_tokens=40)
            tree = csdlib.generate(target, [drafter, long], prompt, k_matrix=[[2, 3], [0, 2]], max_new_tokens=40,
                                   tree=csdlib.Tree(((2, 2),)))
            assert sd.new_tokens == ref and csd.new_tokens == ref and tree.new_tokens == ref
            assert len(sd.new_tokens) == 40                                 # the length cap holds
        else:
            out = csdlib.generate(target, [drafter, long], prompt, k_matrix=[[2, 3], [0, 2]], max_new_tokens=30,
                                  do_sample=True, seed=3)
            assert len(out.new_tokens) == 30
    # this target falls into a 7-token cycle, which MaG copies from the sequence: in long runs, fewer calls
    prompt = list(range(10, 40))
    short = csdlib.generate(target, [MaG(tbl, k=3)], prompt, k_matrix=[[3]], max_new_tokens=40)
    long = csdlib.generate(target, [MaG(tbl, k=3, copy_k=10)], prompt, k_matrix=[[3]], max_new_tokens=40)
    assert long.new_tokens == short.new_tokens
    assert long.stats.calls["target"] < short.stats.calls["target"]
    assert len(long.stats.levels[0].drafted_per_position) > 3 == len(short.stats.levels[0].drafted_per_position)
