"""End-to-end learning check: explore -> train-verifier -> LLM2 decoding must beat greedy in a world where the
right decision is known, and must lose when the verifier's preference is reversed (verifier_train/synthetic.py,
verifier_train/learning_check.py).

One run of the whole loop per label source (rollout triplets, then outcome labels; about 2-3 and 4-5 minutes on 2
CPU cores) is shared by the assertions below.
"""

from __future__ import annotations

import random

import pytest

from verifier_train.learning_check import CheckConfig, right_tokens, run_learning_check
from verifier_train.synthetic import World, build_tokenizer, flawed_solution, make_problems, needs_carry


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("learning")  # the flawed LLM is trained once, for both label sources


@pytest.fixture(scope="module")
def check(workdir):
    return run_learning_check(workdir, CheckConfig())


@pytest.fixture(scope="module")
def outcome_check(workdir, check):
    # outcome labels (llm2 explore --strategy outcome, --objective outcome): 8 samples per problem, full verifier
    return run_learning_check(workdir, CheckConfig(labels="outcome"))


def test_problems_are_gsm8k_shaped_and_deterministic():
    a, b = make_problems(20, seed=5), make_problems(20, seed=5)
    assert a == b and a != make_problems(20, seed=6)
    for p in a:
        body, gold = p["answer"].split("####")
        assert int(gold) == p["start"] + sum(p["addends"])
        assert body.strip().splitlines()[-1].endswith(f"= {gold.strip()} .")


def test_flawed_solutions_drop_carries_and_slip_at_the_configured_rates():
    world = World(p_drop=0.75, p_slip=0.25)
    rng = random.Random(0)
    drops = carries = slips = plain = 0
    for p in make_problems(400, seed=1, world=world):
        text = flawed_solution(p, rng, world)
        x = p["start"]
        for line, b in zip(text.splitlines(), p["addends"]):
            written = int(line.split("=")[1].strip(" ."))
            if needs_carry(x, b):
                carries += 1
                drops += written == x + b - 10
            else:
                plain += 1
                slips += written == x + b - 1
            x = written
    assert 0.68 < drops / carries < 0.82 and 0.18 < slips / plain < 0.32


def test_right_tokens_reads_the_operands_as_written():
    tok = build_tokenizer()
    prompt = tok("user Sam has 37 apples", add_special_tokens=False)["input_ids"]
    gen = tok("37 + 5 = 32 . 32 + 9 =", add_special_tokens=False)["input_ids"]
    right = {s: tok.convert_ids_to_tokens(t) for s, t in right_tokens(tok, prompt, gen).items()}
    toks = tok.convert_ids_to_tokens(gen)
    assert toks[5:7] == ["3", "##2"]
    assert right == {5: "4", 6: "##2"}  # 37 + 5 = 42: the tens digit is wrong, the ones digit right


def test_the_flawed_llm_is_wrong_where_a_carry_is_needed(check):
    # greedy decoding drops the carry: only problems without a carry come out right
    assert check["greedy"]["accuracy"] <= 0.3
    assert check["explore"]["negatives"] >= 300  # exploration found the wrong alternatives


def test_llm2_beats_greedy_by_20_points(check):
    assert check["heldout_pair_accuracy"] > 0.65
    assert check["llm2"]["accuracy"] >= check["greedy"]["accuracy"] + 0.20


def test_flips_happen_mostly_at_the_error_positions(check):
    llm2 = check["llm2"]
    assert llm2["flips"] > 0
    assert llm2["flips_fixing"] > 0.5 * llm2["flips"]
    assert llm2["flips_fixing"] > 2 * llm2["flips_breaking"]


def test_reversed_preference_ends_below_greedy(check):
    assert check["reversed_heldout_pair_accuracy"] < 0.5
    assert check["reversed"]["accuracy"] < check["greedy"]["accuracy"]
    assert check["reversed"]["flips_breaking"] > check["reversed"]["flips_fixing"]


def test_llm2_with_outcome_labels_beats_greedy_by_20_points(outcome_check):
    assert outcome_check["greedy"]["accuracy"] <= 0.3
    assert outcome_check["llm2"]["accuracy"] >= outcome_check["greedy"]["accuracy"] + 0.20
    assert outcome_check["llm2"]["flips_fixing"] > outcome_check["llm2"]["flips_breaking"]


def test_reversed_outcomes_end_below_greedy(outcome_check):
    assert outcome_check["reversed"]["accuracy"] < outcome_check["greedy"]["accuracy"]
