"""The lm-eval tasks in tasks/: data loading, prompts, scoring, and runs through lm-eval's evaluator."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
GSM8K_INSTRUCTION = (
    '\n\nSolve step by step and end your response with "The answer is N." where N is the final number.'
)
MATH_INSTRUCTION = "\n\nSolve step by step and put your final answer within \\boxed{}."
ALL_TASKS = ["gsm8k_llm2", "gsm8k_llm2_maj", "math500_llm2", "math500_llm2_maj"]


def _load_utils():
    spec = importlib.util.spec_from_file_location("llm2_task_utils_under_test", TASKS_DIR / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _load_utils()


@pytest.fixture(scope="module")
def offline(data_dir):  # data_dir: tests/conftest.py ($LLM2_DATA_DIR, default ../shared/data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("LLM2_DATA_DIR", str(data_dir))
        yield


def _task_manager(*extra: Path):
    """Our tasks only (indexing lm-eval's ~10k built-in YAMLs costs ~6 s per TaskManager)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=[str(TASKS_DIR), *map(str, extra)], include_defaults=False)


@pytest.fixture(scope="module")
def tm(offline):
    return _task_manager()


@pytest.fixture(scope="module")
def tasks(tm):
    loaded = tm.load(ALL_TASKS)["tasks"]
    return {name: loaded[name] for name in ALL_TASKS}


def _first_line(path: Path) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.loads(fh.readline())


# ----------------------------------------------------------------------------------------- registration


def test_tasks_are_registered_with_tag(tm):
    for name in ALL_TASKS:
        assert Path(tm.task_index[name].yaml_path).parent == TASKS_DIR
    assert tm.task_index["llm2"].tags == set(ALL_TASKS)


def test_names_do_not_clash_with_lm_eval_builtins():
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager

    # index lm-eval's own task folder alone (a plain TaskManager() also holds ours, via llm2_eval.registration)
    builtin = set(TaskManager(include_path=Path(lm_eval.tasks.__file__).parent, include_defaults=False).all_tasks)
    assert len(builtin) > 1000
    assert builtin.isdisjoint([*ALL_TASKS, "llm2"])


def test_task_configs(tasks):
    for name, task in tasks.items():
        cfg = task.config
        assert cfg.task == name and cfg.output_type == "generate_until" and cfg.test_split == "test"
        assert cfg.metadata["version"] == 1.0
        gen = cfg.generation_kwargs
        assert gen["until"] == []
        assert gen["max_gen_toks"] == (512 if name.startswith("gsm8k") else 1024)
        if name.endswith("_maj"):
            assert gen["do_sample"] is True and gen["temperature"] == 0.7 and cfg.repeats == 8
            assert sorted(task.aggregation()) == ["maj_at_k", "pass_at_1"]
        else:
            assert gen["do_sample"] is False and cfg.repeats == 1
            assert list(task.aggregation()) == ["exact_match"]


# ---------------------------------------------------------------------------------------- docs, prompts


def test_doc_counts_and_prompts(tasks, data_dir):
    gsm = _first_line(data_dir / "gsm8k" / "test.jsonl")
    math = _first_line(data_dir / "math500" / "test.jsonl")
    for name, task in tasks.items():
        docs = list(task.test_docs())
        if name.startswith("gsm8k"):
            assert len(docs) == 1319
            assert docs[0]["question"] == gsm["question"]
            assert task.doc_to_text(docs[0]) == gsm["question"].strip() + GSM8K_INSTRUCTION
            assert task.doc_to_target(docs[0]) == "18"
        else:
            assert len(docs) == 500
            assert task.doc_to_text(docs[0]) == math["problem"].strip() + MATH_INSTRUCTION
            assert task.doc_to_target(docs[0]) == math["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_requests_plain_and_chat(tasks):
    task = tasks["gsm8k_llm2"]
    task.build_all_requests(limit=1)
    (inst,) = task.instances
    context, gen_kwargs = inst.arguments
    assert context == task.doc_to_text(inst.doc)  # 0-shot: the prompt is the whole context
    assert gen_kwargs["do_sample"] is False and gen_kwargs["max_gen_toks"] == 512

    seen = []

    def chat_template(history, add_generation_prompt=True):
        seen.append(history)
        return "<chat>" + json.dumps(history)

    task.build_all_requests(limit=1, apply_chat_template=True, chat_template=chat_template)
    assert task.instances[0].arguments[0].startswith("<chat>")
    assert seen[-1] == [{"role": "user", "content": task.doc_to_text(inst.doc)}]


# ---------------------------------------------------------------------------------------------- scoring


def test_process_results_gsm8k(tasks):
    task = tasks["gsm8k_llm2"]
    doc = next(iter(task.test_docs()))  # gold 18
    assert task.process_results(doc, ["16 - 3 - 4 = 9 eggs, 9 * $2 = $18. The answer is 18."]) == {"exact_match": 1.0}
    assert task.process_results(doc, ["The answer is $18.00"]) == {"exact_match": 1.0}
    assert task.process_results(doc, ["She makes 9 * 2 = 20 dollars. The answer is 20."]) == {"exact_match": 0.0}
    assert task.process_results(doc, ["I cannot tell."]) == {"exact_match": 0.0}

    maj = tasks["gsm8k_llm2_maj"]
    # what lm-eval hands over with the keep-all filter: one instance, its list of k samples
    samples = ["The answer is 18.", "The answer is 20.", "So 18 dollars.", "The answer is 20."]
    assert maj.process_results(doc, [samples]) == {"maj_at_k": 1.0, "pass_at_1": 0.5}  # tie -> first (18)
    samples = ["The answer is 20.", "The answer is 18.", "The answer is 20.", "nothing"]
    assert maj.process_results(doc, [samples]) == {"maj_at_k": 0.0, "pass_at_1": 0.25}
    assert maj.process_results(doc, [["no", "numbers", "here", "at all"]]) == {"maj_at_k": 0.0, "pass_at_1": 0.0}


def test_process_results_math500(tasks):
    task = tasks["math500_llm2"]
    doc = next(iter(task.test_docs()))  # gold \left( 3, \frac{\pi}{2} \right)
    right = "r = 3 and theta = pi/2, so the point is $\\boxed{(3, \\frac{\\pi}{2})}$."
    assert task.process_results(doc, [right]) == {"exact_match": 1.0}
    assert task.process_results(doc, ["The answer is $(3, \\pi/2)$."]) == {"exact_match": 1.0}
    assert task.process_results(doc, ["\\boxed{(0, 3)}"]) == {"exact_match": 0.0}
    assert task.process_results(doc, ["no final answer"]) == {"exact_match": 0.0}

    maj = tasks["math500_llm2_maj"]
    doc = {"problem": "What is 1/2?", "solution": "", "answer": "\\frac{1}{2}"}
    samples = ["\\boxed{0.5}", "\\boxed{3}", "\\boxed{1/2}", "\\boxed{3}"]  # 0.5 and 1/2 group: 2 vs 2 -> first
    assert maj.process_results(doc, [samples]) == {"maj_at_k": 1.0, "pass_at_1": 0.5}
    samples = ["\\boxed{3}", "\\boxed{\\frac{6}{2}}", "\\boxed{0.5}", "no answer"]
    assert maj.process_results(doc, [samples]) == {"maj_at_k": 0.0, "pass_at_1": 0.25}


# ------------------------------------------------------------------------------------------ data errors


def test_missing_dataset_names_both_places(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LLM2_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        utils.load_gsm8k()
    msg = str(err.value)
    assert "openai/gsm8k" in msg and str(tmp_path / "gsm8k" / "test.jsonl") in msg and "LLM2_DATA_DIR" in msg

    with pytest.raises(FileNotFoundError) as err:
        utils.load_math500()
    assert "HuggingFaceH4/MATH-500" in str(err.value) and str(tmp_path / "math500" / "test.jsonl") in str(err.value)

    monkeypatch.delenv("LLM2_DATA_DIR")
    with pytest.raises(FileNotFoundError, match="LLM2_DATA_DIR is not set") as err:
        utils.load_math500()
    assert "HuggingFaceH4/MATH-500" in str(err.value)


def test_missing_dataset_error_reaches_lm_eval(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LLM2_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="openai/gsm8k"):
        _task_manager().load(["gsm8k_llm2"])


def test_hub_failure_falls_back_to_local(tmp_path, monkeypatch):
    import datasets

    def unreachable(*args, **kwargs):
        raise ConnectionError("hub unreachable")

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    monkeypatch.setenv("LLM2_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="failed: ConnectionError: hub unreachable"):
        utils.load_gsm8k()

    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n\n', encoding="utf-8")
    ds = utils.load_gsm8k(version=1.0)  # lm-eval passes task metadata as kwargs
    assert list(ds) == ["test"] and ds["test"][0] == {"question": "q", "answer": "#### 1"}

    # metadata data_dir (``--metadata '{"data_dir": ...}'``) wins over the environment
    monkeypatch.setenv("LLM2_DATA_DIR", str(tmp_path / "elsewhere"))
    assert len(utils.load_gsm8k(data_dir=str(tmp_path))["test"]) == 1


def test_hub_is_used_when_online(monkeypatch):
    import datasets

    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(a) or "from-hub")
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(var, "0")
    assert utils.load_math500() == "from-hub" and calls == [("HuggingFaceH4/MATH-500", None)]
    assert utils.load_gsm8k() == "from-hub" and calls[-1] == ("openai/gsm8k", "main")


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"question": "q", "answer": "#### 1"}\n{"question": "q2", \n', "line 2: malformed JSON"),
        ('{"question": "q", "answer": "#### 1"}\n\n[1, 2]\n', "line 3: expected a JSON object"),
        ('{"question": "q"}\n', "line 1: missing field(s) ['answer']"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, monkeypatch, content, message):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("LLM2_DATA_DIR", str(tmp_path))
    path = tmp_path / "gsm8k" / "test.jsonl"
    path.parent.mkdir()
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError) as err:
        utils.load_gsm8k()
    assert str(path) in str(err.value) and message in str(err.value)


# ------------------------------------------------------------------------------------- full evaluations


def test_dummy_model_runs_all_tasks(tm):
    import lm_eval

    out = lm_eval.simple_evaluate(model="dummy", tasks=["llm2"], limit=3, task_manager=tm)
    res = out["results"]
    for name in ALL_TASKS:
        keys = ["maj_at_k,none", "pass_at_1,none"] if name.endswith("_maj") else ["exact_match,none"]
        assert all(res[name][k] == 0.0 for k in keys), res[name]  # the dummy model always answers "lol"
    assert len(out["samples"]["gsm8k_llm2_maj"][0]["filtered_resps"][0]) == 8  # all k samples kept


def _scripted_lm(script):
    """An lm-eval LM whose i-th generation for a doc is ``script(doc, doc_id, i)``; records the gen kwargs."""
    from lm_eval.api.model import LM

    class ScriptedLM(LM):
        def __init__(self):
            super().__init__()
            self.counts, self.gen_kwargs = {}, []

        def generate_until(self, requests, disable_tqdm=False):
            outs = []
            for req in requests:
                key = (req.task_name, req.doc_id)
                i = self.counts[key] = self.counts.get(key, -1) + 1
                self.gen_kwargs.append(req.arguments[1])
                outs.append(script(req.doc, req.doc_id, i))
            return outs

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    return ScriptedLM()


def _right_or_wrong(doc: dict, right: bool) -> str:
    if "question" in doc:  # GSM8K
        return f"Some steps. The answer is {utils.gsm8k_target(doc) if right else -12345}."
    return f"Some steps. So \\boxed{{{utils.math500_target(doc) if right else -12345}}}"


def test_scripted_samples_reach_the_vote(tm):
    import lm_eval

    # doc 0: samples 0, 3, 5 right (3 of 8, the wrong answer wins the vote); doc 1: 5 of 8 right (wins)
    right = {0: {0, 3, 5}, 1: {1, 2, 4, 6, 7}}
    lm = _scripted_lm(lambda doc, doc_id, i: _right_or_wrong(doc, i in right[doc_id]))
    for name in ("gsm8k_llm2_maj", "math500_llm2_maj"):
        out = lm_eval.simple_evaluate(model=lm, tasks=[name], limit=2, task_manager=tm)
        res = out["results"][name]
        assert res["maj_at_k,none"] == pytest.approx(0.5)
        assert res["pass_at_1,none"] == pytest.approx((3 / 8 + 5 / 8) / 2)
        assert [len(s["filtered_resps"][0]) for s in out["samples"][name]] == [8, 8]
    assert len(lm.gen_kwargs) == 2 * 2 * 8
    assert all(g["do_sample"] is True and g["temperature"] == 0.7 for g in lm.gen_kwargs)


def test_repeats_override_via_include_yaml(offline, tmp_path):
    import lm_eval

    (tmp_path / "maj3.yaml").write_text(
        f"include: {TASKS_DIR / 'gsm8k_llm2_maj.yaml'}\ntask: gsm8k_llm2_maj3\nrepeats: 3\n", encoding="utf-8"
    )
    tm = _task_manager(tmp_path)
    lm = _scripted_lm(lambda doc, doc_id, i: f"The answer is {utils.gsm8k_target(doc) if i == 2 else 1000 + i}.")
    out = lm_eval.simple_evaluate(
        model=lm, tasks=["gsm8k_llm2_maj3"], limit=2, task_manager=tm, gen_kwargs="temperature=1.0"
    )
    res = out["results"]["gsm8k_llm2_maj3"]
    assert res["maj_at_k,none"] == 0.0  # 3 distinct answers: the first (wrong) wins the tie
    assert res["pass_at_1,none"] == pytest.approx(1 / 3)
    assert out["configs"]["gsm8k_llm2_maj3"]["repeats"] == 3
    assert len(lm.gen_kwargs) == 2 * 3 and all(g["temperature"] == 1.0 for g in lm.gen_kwargs)


def test_dev_task_is_the_last_200_train_questions(offline, data_dir):
    from llm2_eval.splits import GSM8K_DEV_SIZE, gsm8k_dev_questions, split_train_dev

    task = _task_manager().load(["gsm8k_llm2_dev"])["tasks"]["gsm8k_llm2_dev"]
    assert task.config.test_split == "dev" and task.config.generation_kwargs["do_sample"] is False
    docs = list(task.test_docs())
    train = [json.loads(x) for x in (data_dir / "gsm8k" / "train.jsonl").read_text().splitlines() if x.strip()]
    assert len(docs) == GSM8K_DEV_SIZE == 200
    assert [d["question"] for d in docs] == [r["question"] for r in train[-200:]]
    assert task.doc_to_text(docs[0]) == train[-200]["question"].strip() + GSM8K_INSTRUCTION
    assert gsm8k_dev_questions(data_dir) == {r["question"].strip() for r in train[-200:]}
    head, dev = split_train_dev(list(range(250)))
    assert head == list(range(50)) and dev == list(range(50, 250))
    with pytest.raises(ValueError, match="at least"):
        split_train_dev([1, 2])
