"""The suffix drafter (csdlib.suffix): its corpus index against a brute-force search, its walk, its
sources, its files and their errors, and cascades with it at the bottom against transformers' greedy output."""

import random

import numpy as np
import pytest

import csdlib
from csdlib import CSDValueError, HFModel, MissingFileError, Tree
from csdlib.suffix import SuffixCorpus, SuffixDrafter

from tiny import hf_greedy, llama, perturbed, t5


def brute_lookup(tokens, context, max_order):
    """(length, ends) of the longest suffix of context (<= max_order) that occurs with a continuation."""
    for m in range(min(max_order, len(context)), 0, -1):
        suffix = list(context[-m:])
        ends = [i for i in range(m - 1, len(tokens) - 1)
                if tokens[i + 1] >= 0 and list(tokens[i - m + 1:i + 1]) == suffix]
        if ends:
            return m, ends
    return 0, []


@pytest.mark.parametrize("seed", [0, 1])
def test_lookup_finds_the_longest_suffix_and_all_its_occurrences(seed):
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 20, size=rng.integers(1, 30)).tolist() for _ in range(60)]
    corpus = SuffixCorpus(seqs, vocab_size=20, max_order=5)
    for trial in range(300):
        context = rng.integers(0, 20, size=rng.integers(1, 9)).tolist()
        if trial % 2:                                  # a context that runs into a corpus answer
            s = seqs[trial % len(seqs)]
            context = context[:2] + s[:rng.integers(1, len(s) + 1)]
        m, ends = corpus.lookup(context)
        assert (m, sorted(ends.tolist())) == brute_lookup(corpus.tokens, context, 5), context


def test_walk_follows_the_most_frequent_continuation_and_stops_below_min_prob():
    corpus = SuffixCorpus([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 5]], vocab_size=10)
    exact = SuffixDrafter(corpus, k=8, min_prob=0.0, alpha=0.0)
    exact.start([9])
    assert exact.draft([9, 1, 2], 8) == ([3, 4], [2 / 3, 2 / 3])       # the answers end after 4: no more
    cautious = SuffixDrafter(corpus, k=8, min_prob=0.4, alpha=1.0)      # 2/4 = 0.5, then 0.5 * 2/3 = 0.33
    cautious.start([9])
    assert cautious.propose([9, 1, 2], 8) == ([3], [1.0])
    assert exact.propose([9, 1, 2], 1) == ([3], [1.0])                  # never more than asked
    assert SuffixDrafter(corpus, k=1, min_prob=0.0).propose([9, 1, 2], 5)[0] == [3]   # nor more than k
    assert exact.propose([9, 7], 4) == ([], [])                         # 7 never seen: nothing to propose


def test_the_request_is_a_source_and_its_weight_decides_against_the_corpus():
    corpus = SuffixCorpus([[8, 11, 12]] * 5, vocab_size=20)
    prompt = [7, 8, 9, 10, 3]
    for weight, expected in [(1.0, [11, 12]), (20.0, [9, 10])]:
        d = SuffixDrafter(corpus, k=4, min_prob=0.0, alpha=1.0, request_weight=weight)
        d.start(prompt)
        assert d.propose(prompt + [7, 8], 2)[0] == expected
    alone = SuffixDrafter(None, k=4, min_prob=0.0)                      # prompt lookup's idea
    alone.start(prompt)
    assert alone.propose(prompt + [7, 8], 4)[0] == [9, 10, 3, 7]
    assert alone.propose(prompt + [10, 3], 2)[0] == [10, 3]             # not its own end: the earlier 10, 3


def test_alternatives_come_from_the_same_counts_best_first():
    corpus = SuffixCorpus([[1, 2, 3], [1, 2, 3], [1, 2, 4], [1, 2, 5], [1, 2, 5], [1, 2, 5]], vocab_size=10)
    d = SuffixDrafter(corpus, k=4)
    d.start([0])
    assert d.alternatives([0, 1, 2], 3) == [5, 3, 4]
    assert d.alternatives([0, 1, 2], 2) == [5, 3]
    assert d.calls == 2


def test_learn_remembers_finished_answers_and_is_off_by_default():
    for learn in (False, True):
        d = SuffixDrafter(SuffixCorpus([[1, 2]], vocab_size=10), k=3, min_prob=0.0, learn=learn)
        d.start([9])
        assert d.propose([9, 5, 6], 3)[0] == []
        d.remember([5, 6, 7, 8])
        d.start([9])                                                    # the next request
        assert d.propose([9, 5, 6], 3)[0] == ([7, 8] if learn else [])
        d.forget()
        d.start([9])
        assert d.propose([9, 5, 6], 3)[0] == []


def test_bad_arguments_are_refused():
    for kwargs, word in [(dict(k=0), "k"), (dict(min_prob=1.5), "min_prob"), (dict(alpha=-1), "alpha"),
                         (dict(learn="yes"), "learn"), (dict(request_weight=float("nan")), "request_weight")]:
        with pytest.raises(CSDValueError, match=word):
            SuffixDrafter(None, **kwargs)
    with pytest.raises(CSDValueError, match="token ids"):
        SuffixCorpus([[1, 99]], vocab_size=10)
    with pytest.raises(CSDValueError, match="max_order"):
        SuffixCorpus([[1]], max_order=0)


def test_save_load_round_trip_and_fingerprint(tmp_path):
    corpus = SuffixCorpus([[1, 2, 3], [4, 5]], vocab_size=50, tokenizer="abc", source="test")
    corpus.save(tmp_path / "corpus.npz")
    back = SuffixCorpus.load(tmp_path / "corpus.npz", vocab_size=50, tokenizer="abc")
    assert back.tokens.tolist() == corpus.tokens.tolist() and back.header["answers"] == 2
    a, b = SuffixDrafter(corpus), SuffixDrafter(tmp_path / "corpus.npz", vocab_size=50)
    assert a.fingerprint() == b.fingerprint() != SuffixDrafter(corpus, k=3).fingerprint()
    assert a.fingerprint() != SuffixDrafter(SuffixCorpus([[1, 2, 3]], vocab_size=50)).fingerprint()


def test_missing_corrupt_or_foreign_corpus_files_give_one_line_naming_the_file(tmp_path):
    path = tmp_path / "corpus.npz"
    with pytest.raises(MissingFileError, match="corpus.npz' does not exist"):
        SuffixCorpus.load(path)
    path.write_bytes(b"not a zip file")
    with pytest.raises(CSDValueError) as e:
        SuffixCorpus.load(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    SuffixCorpus([[1, 2, 3]], vocab_size=50, tokenizer="abc").save(path)
    with pytest.raises(CSDValueError, match="another tokenizer") as e:
        SuffixCorpus.load(path, tokenizer="xyz")
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CSDValueError, match="vocab_size 50, expected 60"):
        SuffixDrafter(path, vocab_size=60)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])                             # a truncated file
    with pytest.raises(CSDValueError, match="not a readable corpus file"):
        SuffixCorpus.load(path)


def own_answers(model, n, seed, vocab=96):
    """Greedy continuations of random prompts by `model`: a corpus of 'the target's past answers'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 6))]
        out.append(hf_greedy(model, prompt, 24)[0].tolist()[len(prompt):])
    return out


@pytest.fixture(scope="module")
def decoder():
    target = llama(0)
    return target, SuffixCorpus(own_answers(target, 12, 0), vocab_size=96)


def test_sd_and_csd_with_the_suffix_drafter_equal_generate(decoder):
    target, corpus = decoder
    rng = random.Random(1)
    mid = HFModel(perturbed(target, 0.05, 1), name="mid")
    accepted = 0
    for case in range(12):
        prompt = [rng.randrange(96) for _ in range(rng.randint(1, 12))]
        suffix = SuffixDrafter(corpus, k=rng.randint(1, 8), min_prob=rng.choice([0.0, 0.2]))
        tree = Tree([[2, 2]], extend=1) if case % 3 == 0 else None
        for drafters, k in [([suffix], [[rng.randint(1, 6)]]), ([mid, suffix], [[1, 2], [0, 3]])]:
            out = csdlib.generate(HFModel(target, name="target"), drafters, prompt, k_matrix=k, max_new_tokens=30,
                                  lenience=rng.choice([1, 2]), tree=tree if len(drafters) == 1 else None)
            assert out.sequences[0].tolist() == hf_greedy(target, prompt, 30)[0].tolist(), (case, k)
            accepted += out.stats.levels[-1].accepted
    assert accepted > 50                                   # the corpus holds the target's answers: it is used


def test_encoder_decoder_target_with_the_suffix_drafter_equals_generate():
    target = t5(0)
    corpus = SuffixCorpus([[5, 6, 7, 8, 9]] * 3, vocab_size=96)
    d = SuffixDrafter(corpus, k=4, min_prob=0.0)
    prompt = [5, 6, 7, 3, 2]
    out = csdlib.generate(HFModel(target, name="target"), [d], prompt, k_matrix=[[4]], max_new_tokens=20)
    assert out.sequences[0].tolist() == hf_greedy(target, prompt, 20)[0].tolist()


def test_a_draft_that_stopped_short_stays_stopped_when_the_cascade_asks_again():
    corpus = SuffixCorpus([[1, 2, 3], [1, 2, 3], [1, 2, 4]], vocab_size=10)
    d = SuffixDrafter(corpus, k=8, min_prob=0.3, alpha=0.0)
    d.start([9])
    tokens, _ = d.propose([9, 1, 2], 6)
    assert tokens == [3]                                                # 2/3, then the answers end
    assert d.propose([9, 1, 2, 3], 5) == ([], [])                       # re-asked after its own draft
    d.start([9])                                                        # a new request: asked afresh
    assert d.propose([9, 1, 2], 6)[0] == [3]
    full = SuffixDrafter(SuffixCorpus([[1, 2, 3, 4, 5, 6]], vocab_size=10), k=2, min_prob=0.0)
    full.start([9])
    assert full.propose([9, 1, 2], 4)[0] == [3, 4]                      # k reached: not a stop
    assert full.propose([9, 1, 2, 3, 4], 2)[0] == [5, 6]
    target = llama(0)
    answer = hf_greedy(target, [9, 1, 2], 12)[0].tolist()[3:]
    d = SuffixDrafter(SuffixCorpus([answer[:6], answer[:3] + [0, 0, 0]], vocab_size=96), k=8, min_prob=0.6, alpha=0.0)
    out = csdlib.generate(HFModel(target, name="target"), [d], [9, 1, 2], k_matrix=[[6]], max_new_tokens=12)
    assert out.new_tokens == answer
    assert out.stats.levels[0].drafted_per_position[0] > 0
    assert len(out.stats.levels[0].drafted_per_position) < 6          # never asked on to fill the entry of 6


def test_the_family_zoo_offers_the_suffix_drafter():
    from csdlib import zoo

    fam = zoo.load("gsm8k-tiny", progress=False)
    suffix = fam.free["suffix"]
    assert isinstance(suffix, SuffixDrafter) and len(suffix.corpus) > 0
    assert fam.free["mag"].name == "mag"
    assert any(d is fam.free[fam.bottom] for d in fam.drafters)        # the default bottom is in .drafters
    other = zoo.load("gsm8k-tiny", progress=False, bottom="mag" if fam.bottom == "suffix" else "suffix")
    assert other.drafters[-1].name != fam.drafters[-1].name
    prompt = fam.prompt_ids("Tom has 3 apples and buys 4 more. How many apples does he have?")
    ref = csdlib.generate(fam.target, [], prompt, max_new_tokens=24).new_tokens
    for drafters, k in [([suffix], [[4]]), (fam.drafters, fam.k_matrix), (other.drafters, other.k_matrix)]:
        assert csdlib.generate(fam.target, drafters, prompt, k_matrix=k, max_new_tokens=24).new_tokens == ref
    with pytest.raises(CSDValueError, match="bottom"):
        zoo.load("gsm8k-tiny", progress=False, bottom="ngram")


@pytest.mark.skipif(not __import__("csdlib.arctic").arctic.available(),
                    reason="arctic-inference is not installed (csdlib/arctic.py; CI builds it)")
def test_suffixdecodings_own_proposer_as_sd_equals_generate(decoder):
    from csdlib.arctic import ArcticSuffix

    target, corpus = decoder
    peer = ArcticSuffix(corpus.answers(), 96, k=4, min_token_prob=0.0)
    rng, accepted = random.Random(2), 0
    for _ in range(6):
        prompt = [rng.randrange(96) for _ in range(rng.randint(1, 6))]
        out = csdlib.generate(HFModel(target, name="target"), [peer], prompt, k_matrix=[[4]], max_new_tokens=30)
        assert out.sequences[0].tolist() == hf_greedy(target, prompt, 30)[0].tolist()
        accepted += out.stats.levels[0].accepted
    assert accepted > 20                                   # its global tree holds the target's answers


def test_generate_hands_each_finished_answer_to_a_learning_drafter(decoder):
    target, _ = decoder
    prompt = [5, 9, 2]
    answer = hf_greedy(target, prompt, 20)[0].tolist()[3:]
    learner = SuffixDrafter(None, k=6, min_prob=0.0, learn=True, vocab_size=96)
    first = csdlib.generate(HFModel(target, name="target"), [learner], prompt, k_matrix=[[6]], max_new_tokens=20)
    second = csdlib.generate(HFModel(target, name="target"), [learner], prompt, k_matrix=[[6]], max_new_tokens=20)
    assert first.new_tokens == second.new_tokens == answer
    assert len(learner.learned) == 2                                   # both answers remembered
    assert second.stats.calls["target"] < first.stats.calls["target"]  # the second draws on the first


def test_csd_corpus_builds_a_corpus_that_your_own_models_can_end_in(tmp_path):
    from csdlib import zoo
    from csdlib.cli import main
    from csdlib.suffix import tokenizer_hash

    path = tmp_path / "corpus.npz"
    assert main(["corpus", "--family", "gsm8k-tiny", "--answers", "8", "--out", str(path), "--threads", "1"]) == 0
    root = zoo.FAMILY_DIRS["gsm8k-tiny"]
    fam = zoo.from_paths(root / "target", [root / "mid"], corpus=path, tokenizer=root / "tokenizer",
                         k_matrix=[[1, 3], [0, 2]])
    suffix = fam.drafters[-1]
    assert isinstance(suffix, SuffixDrafter) and suffix.corpus.header["answers"] == 8
    assert suffix.corpus.header["tokenizer"] == tokenizer_hash(fam.tokenizer)
    assert "questions 0..7" in suffix.corpus.header["source"]
    prompt = fam.prompt_ids("A box holds 6 eggs. How many eggs are in 4 boxes?")
    ref = csdlib.generate(fam.target, [], prompt, max_new_tokens=24).new_tokens
    assert csdlib.generate(fam.target, fam.drafters, prompt, k_matrix=fam.k_matrix, max_new_tokens=24).new_tokens == ref



def test_the_corpus_keeps_no_run_an_answer_copies_from_its_question():
    from csdlib.corpus import without_copies

    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    answer = [20, 21, 22, 3, 4, 5, 6, 7, 8, 30, 31, 5, 6, 7, 40]
    assert without_copies(answer, prompt, run=6) == [[20, 21, 22], [30, 31, 5, 6, 7, 40]]   # short copies stay
    assert without_copies([3, 4, 5, 6, 7, 8], prompt, run=6) == []
    assert without_copies(answer, [], run=6) == [answer]
