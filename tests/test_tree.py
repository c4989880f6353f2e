"""Tree drafts: one forward over a token tree gives each node the logits of its own chain, the cache keeps
the accepted path only, and tree cascades give the target's greedy output, token for token."""

import random

import pytest
import torch

import csdlib
from csdlib import BigramTable, CachedTarget, HFModel, MaG, Tree, build_target_cache
from csdlib.errors import CSDValueError

from test_cascade import _family, check_case
from tiny import VOCAB, llama, t5

N_DECODER_CASES = 180
N_T5_CASES = 120


@pytest.fixture(scope="module")
def llama_family():
    return _family("llama")


@pytest.fixture(scope="module")
def t5_family():
    return _family("t5")


def random_tree(rng: random.Random, n_drafters: int) -> Tree:
    """Widths 1-4 at the first 0-6 draft positions of each reviewing level, MaG continuations 0-3, and
    half the time a budget of 1-5 extra candidates."""
    rows = [[rng.randint(1, 4) for _ in range(rng.randint(0, 6))] for _ in range(max(1, n_drafters))]
    return Tree(rows, extend=rng.randint(0, 3), budget=rng.choice([None, None, None, 1, 2, 5]))


def check_tree_case(seed: int, target, pool, table):
    """test_cascade's random case (drafters, k-matrix, lenience, EOS, confidence) with a random tree."""
    return check_case(seed, target, pool, table, tree=lambda n: random_tree(random.Random(f"tree-{seed}"), n))


@pytest.mark.parametrize("seed", range(N_DECODER_CASES))
def test_tree_greedy_equals_hf_decoder_only(seed, llama_family):
    check_tree_case(seed, *llama_family)


@pytest.mark.parametrize("seed", range(N_T5_CASES))
def test_tree_greedy_equals_hf_encoder_decoder(seed, t5_family):
    check_tree_case(1000 + seed, *t5_family)


@pytest.mark.parametrize("make", [llama, t5])
def test_tree_logits_are_each_nodes_chain_logits(make):
    """Row 1 + t of one tree forward = the logits after the chain root -> node t, fed as a chain."""
    model = make(0)
    tree_model, chain_model = HFModel(model), HFModel(model)
    prompt = list(range(10, 20))
    seq = tree_model.start(prompt)
    chain_model.start(prompt)
    tree_model.logits(seq + [5, 6], 1)                 # a cache that holds more than the prefix: cropped
    tokens, parents = [3, 4, 7, 8, 9, 10, 3], [-1, 0, -1, 2, 1, 0, 3]
    logits = tree_model.tree_logits(seq + [5], tokens, parents)
    assert logits.shape == (1 + len(tokens), VOCAB)
    for t in range(-1, len(tokens)):
        path, node = [], t
        while node >= 0:
            path, node = [tokens[node]] + path, parents[node]
        chain_model.start(prompt)
        ref = chain_model.logits(seq + [5] + path, 1)[0]
        torch.testing.assert_close(logits[1 + t], ref, rtol=0, atol=1e-10)
    # the cache keeps the path 7 -> 8 -> 3 only: the next forward sees exactly that chain
    tree_model.keep_path([2, 3, 6])
    fed = tree_model.tokens_fed
    after = tree_model.logits(seq + [5, 7, 8, 3, 11], 1)
    assert tree_model.tokens_fed - fed == 1            # only the new token was fed
    chain_model.start(prompt)
    torch.testing.assert_close(after, chain_model.logits(seq + [5, 7, 8, 3, 11], 1), rtol=0, atol=1e-10)


def test_a_tree_whose_path_is_not_kept_is_dropped():
    model = llama(0)
    m, ref = HFModel(model), HFModel(model)
    seq = m.start([1, 2, 3])
    m.tree_logits(seq, [4, 5, 6], [-1, -1, 1])
    out = m.logits(seq + [5, 6, 7], 2)                 # no keep_path: the whole tree is dropped
    ref.start([1, 2, 3])
    torch.testing.assert_close(out, ref.logits(seq + [5, 6, 7], 2), rtol=0, atol=1e-10)
    with pytest.raises(CSDValueError, match="call tree_logits first"):
        m.keep_path([0])


def test_width_one_everywhere_is_the_chain(llama_family):
    """A tree of width 1 is the chain: same tokens, calls, tokens fed and acceptance."""
    target, pool, table = llama_family
    prompt = list(range(30, 60))
    runs = [csdlib.generate(HFModel(target, name="t"), [HFModel(pool[1], name="d"), MaG(table, k=4)], prompt,
                            k_matrix=[[3, 2], [0, 3]], max_new_tokens=40, tree=tree)
            for tree in (None, Tree([[1, 1, 1, 1, 1, 1], [1, 1, 1]], extend=3))]
    assert runs[0].new_tokens == runs[1].new_tokens
    assert runs[0].stats == runs[1].stats


def test_ranks_count_every_accepted_token_of_a_tree_review(llama_family):
    """With a width > 1 at every draft position, every review of the target is a tree review: the
    accepted tokens by depth and rank sum to the accepted tokens per position, and a good drafter's
    second candidates are accepted somewhere."""
    target, pool, table = llama_family
    outs = [csdlib.generate(HFModel(target, name="t"), [HFModel(pool[2], name="d")], list(range(s, s + 20)),
                            k_matrix=[[4]], max_new_tokens=48, tree=Tree([[3] * 4])) for s in range(0, 60, 12)]
    level = csdlib.Stats.merge_all(o.stats for o in outs).levels[0]
    assert [sum(by_rank) for by_rank in level.accepted_by_rank] == level.accepted_per_position
    assert sum(level.accepted_by_rank[0][1:]) > 0


def test_cached_target_reviews_trees_as_the_real_target(tmp_path, llama_family):
    """The replayed target makes every decision the real one makes: same tokens, calls, tokens fed."""
    target, pool, table = llama_family
    prompts = [list(range(s, s + 16)) for s in range(0, 40, 10)]
    cached = build_target_cache(HFModel(target, name="t"), prompts, 40, tmp_path / "cache.jsonl")
    tree = Tree([[3, 2, 2, 2]], extend=2)
    for prompt in prompts:
        runs = [csdlib.generate(t, [HFModel(pool[2], name="d"), MaG(table, k=3)], prompt, k_matrix=[[2, 2], [0, 2]],
                                max_new_tokens=40, eos_token_id=[], tree=tree)
                for t in (HFModel(target, name="t"), CachedTarget.load(tmp_path / "cache.jsonl"))]
        assert runs[0].new_tokens == runs[1].new_tokens
        assert runs[0].stats == runs[1].stats
    assert cached.name == "t"


@pytest.mark.parametrize("tree, message", [
    (Tree([[0]]), r"widths\[0\]\[0\] must be an int >= 1"),
    (Tree([[2]], extend=-1), "extend must be an int >= 0"),
    (Tree([[2], [2], [2]]), "3 width rows for 1 reviewing level"),
    ("wide", "expected None, a csdlib.Tree or a list of width rows"),
    (Tree([2, 2]), "widths must be a list of rows"),
    (Tree([[2]], budget=0), "budget must be None"),
    (Tree([[2]], budget=1.5), "budget must be None"),
])
def test_bad_trees_are_refused(tree, message):
    target, drafter = llama(0), llama(1)
    with pytest.raises(CSDValueError, match=message):
        csdlib.generate(target, [drafter], [1, 2, 3], k_matrix=[[2]], max_new_tokens=4, tree=tree)


def test_tree_is_greedy_only():
    with pytest.raises(CSDValueError, match="greedy decoding only"):
        csdlib.generate(llama(0), [llama(1)], [1, 2, 3], k_matrix=[[2]], max_new_tokens=4, do_sample=True,
                        tree=Tree([[2]]))


def test_a_reviewer_without_tree_logits_is_refused():
    class ChainOnly(HFModel):
        tree_logits = None
    with pytest.raises(CSDValueError, match="cannot verify a tree"):
        csdlib.generate(ChainOnly(llama(0), name="t"), [llama(1)], [1, 2, 3], k_matrix=[[2]], max_new_tokens=4,
                        tree=[[2]])


def test_mag_continues_branches_for_free():
    """Each extra candidate of the target's tree is continued by MaG's tokens: with extend=3 the tree
    fed to the target holds 4 tokens per extra candidate where it could."""
    target, drafter = llama(0), llama(1)
    table = BigramTable.from_sequences([list(range(VOCAB))], VOCAB)
    fed = {}
    for extend in (0, 3):
        out = csdlib.generate(HFModel(target, name="t"), [HFModel(drafter, name="d"), MaG(table, k=3)], [5, 6, 7],
                              k_matrix=[[2, 0], [0, 1]], max_new_tokens=30, tree=Tree([[2, 2]], extend=extend))
        fed[extend] = out.stats.tokens_fed["t"]
    assert fed[3] > fed[0]


def test_a_tuned_tree_goes_through_family_json_into_the_methods():
    from csdlib.experiment import standard_methods
    from csdlib.tuning import Tuned
    from csdlib.zoo import tree_from_json

    tuned = Tuned([[2]], 1.0, None, 1.3, "latency", tree=Tree(((3, 3, 2),), extend=2))
    assert tree_from_json(tuned.as_default()["tree"]) == tuned.tree
    budgeted = Tuned([[2]], 1.0, None, 1.3, "latency", tree=Tree(((3, 3, 2),), extend=2, budget=2))
    assert tree_from_json(budgeted.as_default()["tree"]) == budgeted.tree
    assert tree_from_json({"widths": [[2]]}) == Tree(((2,),))             # older family.json: no budget
    assert tree_from_json(None) is None
    drafter = HFModel(llama(1), name="d")
    names = [m.name for m in standard_methods([drafter], k_matrix=[[2]], tree=tuned.tree)]
    assert names == ["AR", "SD(d)", "CSD", "tree CSD"]
    assert standard_methods([drafter], k_matrix=[[2]], tree=tuned.tree)[-1].generate_kwargs == {"tree": tuned.tree}


def test_a_budget_keeps_the_likeliest_extra_candidates():
    """Scores: the drafters' probability of the chain before a position times the candidate's own."""
    from csdlib.cascade import Cascade

    def chosen(budget):
        c = Cascade([HFModel(llama(0), name="t"), HFModel(llama(1), name="d")], [[3]], 1.0, None, None,
                    Tree([[3, 3, 3]], budget=budget))
        c.alts = [[], [(5, 0.3), (6, 0.1)], [(7, 0.5), (8, 0.2)], [(9, 0.9), (10, 0.05)]]
        return c.side_branches(0, [None, 0.8, 0.5, 0.9], 1, 3)

    # (0, 2): 0.3, (0, 3): 0.1, (1, 2): 0.8 x 0.5 = 0.4, (1, 3): 0.16, (2, 2): 0.4 x 0.9 = 0.36, (2, 3): 0.02
    assert chosen(1) == {(1, 2)}
    assert chosen(2) == {(1, 2), (2, 2)}
    assert chosen(3) == {(1, 2), (2, 2), (0, 2)}
    assert chosen(None) == chosen(6) == {(d, r) for d in range(3) for r in (2, 3)}


def test_a_budget_bounds_every_trees_extra_candidates_and_stays_exact(llama_family):
    """Every tree the target verifies holds at most `budget` extra candidates (rank > 1; their MaG
    continuations have rank 1); without the budget, some tree holds more; the output is the same."""
    target, pool, table = llama_family
    prompt = list(range(20, 44))
    runs = {b: csdlib.generate(HFModel(target, name="t"), [HFModel(pool[2], name="d"), MaG(table, k=3)], prompt,
                               k_matrix=[[4, 2], [0, 2]], max_new_tokens=40, tree=Tree([[4] * 6], extend=2, budget=b))
            for b in (None, 2)}
    extra = {b: [sum(r > 1 for r in t["ranks"]) for t in out.trees if t["level"] == 0] for b, out in runs.items()}
    assert max(extra[2]) <= 2 < max(extra[None])
    assert runs[2].new_tokens == runs[None].new_tokens == csdlib.generate(target, [], prompt, max_new_tokens=40).new_tokens
