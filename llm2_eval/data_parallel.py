"""Data-parallel evaluation with the ``llm2`` model: the processes of ``accelerate launch`` / ``torchrun``, on GPUs
and on CPUs (docs/scaling.md).

lm-eval's HFLM takes the launcher's rank and world size only when it counts more than one GPU; on CPUs every process
of a 2-process launch would run the whole evaluation as rank 0 (and all would write the same files). Under such a
launch on a machine without GPUs, llm2 sets ``ACCELERATE_USE_CPU`` (unless set) before HFLM starts, so that HFLM's
``Accelerator`` joins the launch's process group (gloo) (:func:`join_cpu_launch`), then takes that group's rank and
world size (:func:`cpu_launch_rank`): lm-eval shares out the requests and gathers the results over gloo as it does
over GPUs. Each rank's trace carries the run id of rank 0 (:func:`shared_run_stamp`).
"""

from __future__ import annotations

import os
from typing import Any

import torch


def join_cpu_launch() -> int:
    """The number of processes ``accelerate launch`` / ``torchrun`` started (``WORLD_SIZE``, 1 without a launch);
    without GPUs, ``ACCELERATE_USE_CPU`` is set (unless set) so that HFLM's ``Accelerator`` joins them over gloo."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and not torch.cuda.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    return launched


def cpu_launch_rank(accelerator: Any, world_size: int, device: torch.device) -> tuple[int, int] | None:
    """``(rank, world size)`` of this process in a CPU launch that HFLM ran as one process (its ``world_size`` 1 on
    a ``cpu`` device while its ``Accelerator`` counts several processes); None otherwise."""
    acc = accelerator
    if acc is None or acc.num_processes <= 1 or world_size > 1 or device.type != "cpu":
        return None
    return int(acc.process_index), int(acc.num_processes)


def check_launch(launched: int, world_size: int, kwargs: dict[str, Any]) -> None:
    """Refuse a launch of several processes that lm-eval runs as one rank each (every process would run the whole
    evaluation and write the same files); tensor parallelism (``tp_plan``) is one model over the processes.

    Raises:
        ValueError: one line naming the launch and the GPUs visible.
    """
    if launched > 1 and world_size == 1 and not kwargs.get("tp_plan"):
        raise ValueError(
            f"llm2: launched as {launched} processes (WORLD_SIZE={launched}) but lm-eval gave this one rank 0 of 1 "
            f"({torch.cuda.device_count()} GPU(s) visible): every process would run the whole evaluation and "
            "write the same files; launch one process per GPU, or on CPUs see docs/scaling.md")


def shared_run_stamp(stamp: dict, world_size: int) -> dict:
    """The run id and start time of rank 0 for every rank of a data-parallel run (one collective call), so that
    each rank's trace carries the run's one id, the one lm-eval writes into the results."""
    ours = {"run_id": stamp["run_id"], "start_time": stamp["start_time"]}
    if world_size <= 1 or not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return ours
    shared = [ours]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]
