"""Checkpoints of verifier training: the model to start from, LoRA adapters, resume points, the final save.

The verifier starts from an LLM (a new 1-output score head, docs/method.md section 2) or from a verifier checkpoint
(``init_from``); with ``lora`` the backbone trains through peft adapters while the head stays fully trainable,
and the adapters are merged into the final checkpoint (``lora_save="merged"``) or saved as a PEFT adapter
directory with the head (``lora_save="adapter"``, loaded by :mod:`llm2_eval.adapters`). Resumable Trainer
checkpoints live under ``<output>/checkpoints``; the final ``<output>`` is a plain token-classification checkpoint
or that adapter directory, optionally cast to bf16/fp16 (``save_dtype``). It is written to a staging folder inside
``<output>`` (:data:`FINAL_STAGING`) and moved into place file by file (:func:`publish_final`): a kill during the
save leaves the previous verifier whole, and a file hard-linked elsewhere is replaced, never written through.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from safetensors.torch import load_file, save_file

from llm2_eval.adapters import ADAPTER_MARKER
from llm2_eval.jsonl import iter_jsonl
from llm2_eval.loading import build_verifier, head_name, resolve_dtype
from verifier_train.train.config import TrainConfig

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer


def cast_checkpoint(directory: str | os.PathLike, dtype: str) -> None:
    """Rewrite a saved checkpoint's floating-point weights in ``dtype`` (in place, file by file).

    Every ``*.safetensors`` file of ``directory`` is rewritten through a temporary file and an atomic rename;
    ``config.json``'s dtype and a shard index's ``total_size`` are updated to match. Integer tensors are kept.

    Args:
        directory: a ``save_pretrained`` directory.
        dtype: ``"bfloat16"``, ``"float16"`` or ``"float32"``.

    Raises:
        FileNotFoundError: ``directory`` holds no ``*.safetensors`` file.
        ValueError: an unknown ``dtype`` (from :func:`llm2_eval.loading.resolve_dtype`).
    """
    target = resolve_dtype(dtype)
    d = Path(directory)
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors file in {d} to cast to {dtype}")
    total = 0
    for f in files:
        tensors = {k: (v.to(target) if v.is_floating_point() else v).contiguous() for k, v in load_file(f).items()}
        total += sum(v.numel() * v.element_size() for v in tensors.values())
        tmp = f.with_name(f.name + ".partial")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, f)
    index = d / "model.safetensors.index.json"
    if index.exists():
        meta = json.loads(index.read_text(encoding="utf-8"))
        meta.setdefault("metadata", {})["total_size"] = total
        index.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    cfg_path = d / "config.json"
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        key = "dtype" if "dtype" in cfg or "torch_dtype" not in cfg else "torch_dtype"
        cfg[key] = str(target).removeprefix("torch.")
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")


def load_model(cfg: TrainConfig) -> "PreTrainedModel":
    """The verifier to train, in float32: ``cfg.model`` with a new 1-output score head (zero with
    ``cfg.head_init == "zero"``, else random, seeded by ``cfg.seed``; docs/method.md section 2), or the verifier checkpoint
    ``cfg.init_from``.

    ``init_from`` is loaded with one label whatever its config says (:func:`llm2_eval.loading.build_verifier`).

    Raises:
        ValueError: the model has no token-classification class.
    """
    return build_verifier(
        cfg.init_from or cfg.model, dtype=torch.float32, attn_implementation=cfg.attn_implementation, seed=cfg.seed,
        zero_head=not cfg.init_from and cfg.head_init == "zero", use_cache=False, quiet=not cfg.init_from,
    )


def apply_lora(cfg: TrainConfig, model: "PreTrainedModel"):
    """``model`` wrapped with peft LoRA adapters (rank ``cfg.lora_r`` on ``cfg.lora_target``); the score head is
    kept fully trainable (``modules_to_save``)."""
    from peft import LoraConfig, TaskType, get_peft_model

    head = head_name(model)
    target: Any = cfg.lora_target
    if target != "all-linear":
        target = [t.strip() for t in target.split(",") if t.strip()]
    lcfg = LoraConfig(
        task_type=TaskType.TOKEN_CLS, r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
        target_modules=target, modules_to_save=[head],
    )
    return get_peft_model(model, lcfg)


def checkpoint_dirs(ckpt_dir: Path) -> list[Path]:
    """The Trainer checkpoint directories (``checkpoint-N``) under ``ckpt_dir``, newest (highest N) first."""
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why the Trainer checkpoint ``path`` cannot be resumed from (e.g. the run was killed while saving it), or
    None when it is complete.

    ``Trainer._save_checkpoint`` writes the weights, then the optimizer, scheduler and RNG states, and
    ``trainer_state.json`` last; a checkpoint is complete when that file parses, it holds weights, and no
    safetensors or ``torch.save`` file in it is cut short (a safetensors file is as long as its header says, a
    ``torch.save`` zip has its end record).
    """
    try:
        int(json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))["global_step"])
    except FileNotFoundError:
        return "no trainer_state.json (saving did not finish)"
    except (OSError, ValueError, KeyError, TypeError):
        return "trainer_state.json is unreadable"
    entries = list(path.iterdir())
    weights = [f for f in entries if f.is_file() and f.suffix in (".safetensors", ".bin")
               and not f.name.startswith(("optimizer", "training_args", "scaler"))]
    if not weights and not any(f.is_dir() for f in entries):  # DeepSpeed / FSDP keep their states in folders
        return "no model weights"
    for f in sorted(entries):
        if f.suffix == ".safetensors" and not _safetensors_complete(f):
            return f"{f.name} is truncated"
        if f.suffix in (".pt", ".pth") and f.is_file() and not zipfile.is_zipfile(f):
            return f"{f.name} is truncated"
    if not any(f.name.startswith("optimizer") for f in entries) and not any(f.is_dir() for f in entries):
        return "no optimizer state"
    return None


def _safetensors_complete(f: Path) -> bool:
    """Whether a safetensors file is as long as its header says (8-byte header length + header + tensor data)."""
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                return False
            header = json.loads(fh.read(n))
    except (OSError, ValueError):
        return False
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    return size == 8 + n + max(ends, default=0)


def last_checkpoint(ckpt_dir: Path, on_skip: Callable[[Path, str], None] | None = None) -> Path | None:
    """The newest COMPLETE Trainer checkpoint (``checkpoint-N``) under ``ckpt_dir``, or None.

    Newer checkpoints that :func:`checkpoint_problem` finds incomplete are skipped; ``on_skip(path, reason)`` is
    called for each (to warn).
    """
    for path in checkpoint_dirs(ckpt_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if on_skip is not None:
            on_skip(path, problem)
    return None


def checkpoint_step(path: Path) -> int:
    """The optimizer step a Trainer checkpoint was saved at (its ``trainer_state.json``, else its name)."""
    state = path / "trainer_state.json"
    if state.exists():
        return int(json.loads(state.read_text()).get("global_step", 0))
    return int(path.name.rsplit("-", 1)[-1])


def trim_log(path: Path, keep_up_to: int | None) -> None:
    """Start ``train_log.jsonl`` afresh (``keep_up_to=None``) or keep only lines of steps ``<= keep_up_to`` (resume),
    so a resumed run does not repeat the steps an interrupted run logged after its last checkpoint."""
    if not path.exists():
        return
    if keep_up_to is None:
        path.unlink()
        return
    kept = []
    for _, obj in iter_jsonl(path, on_error="skip"):
        try:
            if int(obj.get("step", 0)) <= keep_up_to:
                kept.append(json.dumps(obj, ensure_ascii=False))
        except (ValueError, TypeError):
            continue
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)


def adapter_base(config: TrainConfig) -> str:
    """The ``base_model_name_or_path`` an adapter records: the model training started from (``init_from`` or
    ``model``), as an absolute path when it is a local directory (so the adapter loads from any working directory)."""
    src = str(config.init_from or config.model)
    return str(Path(src).resolve()) if Path(src).exists() else src


def save_adapter(trainer: "Trainer", config: TrainConfig, out: Path, tokenizer: "PreTrainedTokenizerBase") -> None:
    """Save the trained LoRA verifier to ``out`` as a PEFT adapter directory: ``adapter_config.json`` (task type
    TOKEN_CLS, base :func:`adapter_base`) and ``adapter_model.safetensors`` (LoRA matrices + the trained score head,
    peft's ``modules_to_save``), with the tokenizer and llm2's note ``llm2_verifier.json``.
    :func:`llm2_eval.verifier.load_verifier` loads it."""
    peft_model = trainer.accelerator.unwrap_model(trainer.model)
    base = adapter_base(config)
    for pconf in peft_model.peft_config.values():
        pconf.base_model_name_or_path = base
    if trainer.is_world_process_zero():
        peft_model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(out)
        note = {"llm2_verifier": {"base_model": base, "head": head_name(peft_model.base_model.model), "num_labels": 1,
                                  "format": "peft-adapter"}}
        (out / ADAPTER_MARKER).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")


#: where the final verifier is written before it is moved into ``<output>`` (:func:`publish_final`)
FINAL_STAGING = ".llm2-final.partial"
#: files moved first: they mark the directory as an llm2 checkpoint (:func:`llm2_eval.paths.is_llm2_checkpoint`)
_MARKERS = ("config.json", "llm2_verifier.json")


def publish_final(stage: Path, out: Path) -> None:
    """Move every entry of the staging folder ``stage`` into ``out`` (``os.replace``: each file is swapped whole,
    as a new file, so a hard link to an old one keeps its content), llm2's markers first, then remove ``stage``."""
    entries = sorted(stage.iterdir(), key=lambda f: (f.name not in _MARKERS, f.name))
    for f in entries:
        dest = out / f.name
        if f.is_dir() and dest.is_dir():
            shutil.rmtree(dest)
        os.replace(f, dest)
    stage.rmdir()


def save_final(trainer: "Trainer", config: TrainConfig, out: Path, tokenizer: "PreTrainedTokenizerBase",
               console: Any) -> None:
    """Save the trained verifier to ``out``: a plain 1-label token-classification checkpoint (LoRA merged) with its
    tokenizer, or with ``lora_save="adapter"`` a PEFT adapter directory (:func:`save_adapter`); cast to
    ``config.save_dtype`` when that is not float32 (a checkpoint in another format, e.g. a DeepSpeed/FSDP save,
    stays as saved, with a warning on ``console``)."""
    if config.lora and config.lora_save == "adapter":
        save_adapter(trainer, config, out, tokenizer)
    else:
        final = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload() if config.lora else trainer.model
        final.config.use_cache = True
        final.config.llm2_verifier = {"base_model": str(config.model or config.init_from), "head": head_name(final),
                                      "num_labels": 1}
        if not config.lora:
            trainer.save_model(str(out))
        elif trainer.is_world_process_zero():
            final.save_pretrained(out, safe_serialization=True)
            tokenizer.save_pretrained(out)
    if config.save_dtype != "float32" and trainer.is_world_process_zero():
        try:
            cast_checkpoint(out, config.save_dtype)
        except FileNotFoundError as err:  # e.g. a DeepSpeed/FSDP save in another format: keep it as saved
            console.print(f"[yellow]--save-dtype {config.save_dtype}: {err}; the checkpoint stays as saved[/yellow]")
