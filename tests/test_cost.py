"""Cost tables, SWI and the analytic expectation (csdlib.cost)."""

import pytest

from csdlib import BigramTable, LevelStats, MaG
from csdlib.cost import (MODEL_PARAMETERS, PREVIOUS_WORK, acceptance_rate, cost_tables, expected_speedup,
                         expected_tokens_per_call, resolve_cost, swi, swi_total, table_costs)
from csdlib.errors import CSDValueError


@pytest.mark.parametrize("name, params, previous", [
    ("google/flan-t5-xxl", 11300, 1), ("google/flan-t5-xl", 3000, None), ("google/flan-t5-large", 770, 0.11),
    ("google/flan-t5-base", 220, 0.04), ("google/flan-t5-small", 60, 0.02),
    ("JackFram/llama-160m", 160, None), ("JackFram/llama-68m", 68, None), ("llama_7b", 7000, None),
    ("LLaMA-2-7B-chat", 7000, None),
])
def test_seed_names_resolve(name, params, previous):
    assert resolve_cost(name, MODEL_PARAMETERS) == params
    if previous is None:
        with pytest.raises(CSDValueError, match="matches no key"):
            resolve_cost(name, PREVIOUS_WORK)
    else:
        assert resolve_cost(name, PREVIOUS_WORK) == previous


def test_seven_b_is_at_parameter_scale():
    assert MODEL_PARAMETERS["7b"] == MODEL_PARAMETERS["llama"] == 7000


def test_unknown_name_is_a_clear_error():
    with pytest.raises(CSDValueError, match="'target' matches no key"):
        resolve_cost("target", MODEL_PARAMETERS)


class Named:
    def __init__(self, name, cost):
        self.name, self.cost = name, cost


def test_tables_mag_costs_zero_and_incomplete_tables_are_left_out():
    mag = MaG(BigramTable([0, 1]), k=3)
    models = [Named("google/flan-t5-xxl", 5.0), Named("google/flan-t5-base", 2.0), mag]
    assert table_costs(models, PREVIOUS_WORK) == {"google/flan-t5-xxl": 1.0, "google/flan-t5-base": 0.04, "mag": 0.0}
    tables = cost_tables(models, measured={"google/flan-t5-xxl": 0.3, "google/flan-t5-base": 0.1, "mag": 0.0})
    assert set(tables) == {"parameters", "model_parameters", "previous_work", "measured"}
    assert tables["parameters"] == {"google/flan-t5-xxl": 5.0, "google/flan-t5-base": 2.0, "mag": 0.0}
    assert set(cost_tables([Named("target", 9.0), Named("mid", 1.0)])) == {"parameters"}


def test_swi_per_sample_and_aggregate():
    costs = {"t": 10.0, "d": 1.0, "mag": 0.0}
    assert swi(8, {"t": 8}, costs, "t") == 1.0                         # AR
    assert swi(8, {"t": 2, "d": 8, "mag": 5}, costs, "t") == 80 / 28
    # aggregate = ratio of totals, not the mean of ratios
    tokens, calls = [10, 2], [{"t": 2, "d": 10}, {"t": 2, "d": 0}]
    assert swi_total(tokens, calls, costs, "t") == 120 / 50
    assert swi_total(tokens, calls, costs, "t") != (100 / 30 + 20 / 20) / 2
    with pytest.raises(CSDValueError, match="no cost for model"):
        swi(1, {"x": 1}, costs, "t")


def test_expected_speedup_leviathan():
    assert expected_tokens_per_call(0.0, 4) == 1.0
    assert expected_tokens_per_call(1.0, 4) == 5.0
    assert expected_tokens_per_call(0.5, 2) == pytest.approx(1.75)
    assert expected_speedup(0.5, 0.1, 2) == pytest.approx(1.75 / 1.2)
    assert expected_speedup(1.0, 0.0, 3) == 4.0
    with pytest.raises(CSDValueError, match="alpha"):
        expected_speedup(1.5, 0.1, 2)


def test_acceptance_rate_counts_only_examined_positions():
    # SD with k=3, three reviews accepting 0, 2 and 3 tokens: examined 1 + 3 + 3 = 7 positions, 5 accepted
    level = LevelStats(0, "t", 3, 9, 5, [3, 3, 3], [2, 2, 1])
    assert acceptance_rate(level) == 5 / 7
