"""The 0-shot prompts of the llm2 lm-eval tasks, shared with exploration (``llm2 explore --prompt task``).

The tasks send the bare question plus one instruction (docs/method.md section 8: the released setting is a 0-shot chat
prompt with the bare question; the instruction asks for the answer format our answer extraction reads). When the
verifier's training data is explored with the same user message as the evaluation (``--prompt task``), the
contexts the verifier is trained on are the contexts it scores at decoding time. Standard library only.
"""

from __future__ import annotations

GSM8K_INSTRUCTION = 'Solve step by step and end your response with "The answer is N." where N is the final number.'
MATH_INSTRUCTION = "Solve step by step and put your final answer within \\boxed{}."


def gsm8k_prompt(question: str) -> str:
    """The ``gsm8k_llm2`` user message: the stripped question, a blank line, :data:`GSM8K_INSTRUCTION`."""
    return f"{question.strip()}\n\n{GSM8K_INSTRUCTION}"


def math_prompt(problem: str) -> str:
    """The ``math500_llm2`` user message: the stripped problem, a blank line, :data:`MATH_INSTRUCTION`."""
    return f"{problem.strip()}\n\n{MATH_INSTRUCTION}"


def task_prompt(data_format: str, question: str) -> str:
    """The task's user message for a ``"gsm8k"`` or ``"math"`` question.

    Raises:
        ValueError: another format.
    """
    if data_format == "gsm8k":
        return gsm8k_prompt(question)
    if data_format == "math":
        return math_prompt(question)
    raise ValueError(f"no task prompt for format {data_format!r}")
