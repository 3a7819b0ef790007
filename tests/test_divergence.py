"""First-divergence pairs from outcome samples (``llm2 divergence-pairs``, verifier_train/explore/divergence.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from transformers import AutoTokenizer

from llm2_eval.cli import main
from llm2_eval.jsonl import JsonlError
from verifier_train.explore.divergence import first_divergence, write_divergence_pairs
from verifier_train.records import chat_token_ids, response_start
from verifier_train.train.data import load_pair_data

PROMPT = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples?"}]


def _record(qid, outcomes):
    return {"id": qid, "messages": PROMPT, "samples": [], "gold_answer": "7",
            "outcomes": [{"response": r, "correct": c} for r, c in outcomes]}


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(tiny_llm):
    return AutoTokenizer.from_pretrained(tiny_llm)


def _ids(tok, response):
    return chat_token_ids(tok, PROMPT + [{"role": "assistant", "content": response}])


def test_pairs_sit_at_the_first_token_where_right_and_wrong_part_ways(tmp_path, tok):
    right, wrong1, wrong2 = "3 + 4 = 7. The answer is 7.", "3 + 4 = 8. The answer is 8.", "3 * 4 = 12. The answer is 12."
    src = _write(tmp_path / "outcomes.jsonl", [
        _record(1, [(right, 1), (wrong1, 0), (wrong2, 0), (right, 1)]),  # the repeated right response: same pairs
        _record(2, [(right, 1), (right, 1)]),  # all right: no pair
        _record(3, [(wrong1, 0), ("", 0)]),  # all wrong: no pair
    ])
    counts = write_divergence_pairs(src, tmp_path / "pairs.jsonl", tok)
    recs = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert counts == {"questions": 3, "mixed_questions": 1, "records": 2, "pairs": 4}
    assert [r["id"] for r in recs] == ["1/r0", "1/r3"] and all(r["divergence_of"] == 1 for r in recs)
    ids = _ids(tok, right)
    start = response_start(tok, PROMPT + [{"role": "assistant", "content": right}])
    expected = []
    for w in (wrong1, wrong2):
        wids = _ids(tok, w)
        k = next(i for i in range(start, len(ids)) if ids[i] != wids[i])
        assert ids[start:k] == wids[start:k]  # same prefix, then the two tokens differ
        expected.append([k, ids[k], wids[k]])
    assert recs[0]["samples"] == sorted(expected) and recs[0]["messages"][-1]["content"] == right
    # the output is an ordinary triplet file: every triplet matches its tokens (input_ids[pos] == gold)
    data = load_pair_data([tmp_path / "pairs.jsonl"], tok)
    assert sum(e.num_pairs for e in data.train) == 4


def test_a_response_that_is_the_others_beginning_gives_no_pair():
    assert first_divergence([1, 2, 3, 4], [1, 2, 3], start=1) is None
    assert first_divergence([1, 2, 3, 4], [1, 2, 5, 4], start=1) == 2
    assert first_divergence([1, 2, 3], [9, 2, 3], start=1) is None  # the prompt part is not compared


def test_a_bad_line_is_named_and_nothing_is_written(tmp_path, tok):
    src = tmp_path / "outcomes.jsonl"
    src.write_text(json.dumps(_record(1, [("a", 1), ("b", 0)])) + "\n" + json.dumps({"messages": PROMPT}) + "\n")
    with pytest.raises(JsonlError, match=r"outcomes\.jsonl:2: not an outcome record"):
        write_divergence_pairs(src, tmp_path / "pairs.jsonl", tok)
    assert not (tmp_path / "pairs.jsonl").exists()


def test_the_command_refuses_to_replace_a_file_it_did_not_write(tmp_path, tiny_llm):
    src = _write(tmp_path / "outcomes.jsonl", [_record(1, [("3 + 4 = 7.", 1), ("3 + 4 = 8.", 0)])])
    foreign = tmp_path / "foreign.jsonl"
    foreign.write_text('{"messages": [], "samples": []}\n')
    args = ["divergence-pairs", "--model", str(tiny_llm), "--data", str(src)]
    res = CliRunner().invoke(main, [*args, "--output", str(foreign), "--overwrite"])
    assert res.exit_code != 0 and "not written by llm2 divergence-pairs" in res.output
    assert foreign.read_text() == '{"messages": [], "samples": []}\n'
    out = tmp_path / "pairs.jsonl"
    res = CliRunner().invoke(main, [*args, "--output", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.splitlines()[-1]) == {"questions": 1, "mixed_questions": 1, "records": 1, "pairs": 1}
    again = CliRunner().invoke(main, [*args, "--output", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    assert CliRunner().invoke(main, [*args, "--output", str(out), "--overwrite"]).exit_code == 0
