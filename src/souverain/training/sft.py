"""Supervised fine-tuning with LoRA: the recipe a training node runs, as its own process.

    python -m souverain.training.sft SPEC.json

SPEC.json (written by the training actor into the node's private directory):
    base             {"path": file or directory, "gguf_file": name or null} (a GGUF is
                     dequantised into PyTorch by transformers; a directory is a HF model)
    train, valid     chat JSONL files, decrypted on this node (valid may be null)
    output_dir       checkpoints and the final adapter go here
    resume_from      a checkpoint directory to carry on from, or null
    hyperparameters  an `SFTConfig` (training/configs.py)
    threads          CPU threads for PyTorch

Progress goes to OUTPUT_DIR/progress.jsonl, one JSON object a line (never training text):
    validated {samples, tokens, thinking_fraction} | invalid {line, message} | loaded {seconds}
    step {step, total, loss, tokens, tokens_per_s, learning_rate}
    checkpoint {step, path, metrics} | paused {step} | done {step, tokens, adapter_dir,
    adapter_gguf, metrics}
SIGTERM asks for a checkpoint and a clean stop (pause); the actor SIGKILLs to cancel.
Exit codes: 0 done or paused, 3 invalid data, anything else a failure.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from souverain.training import configs
from souverain.training.configs import SFTConfig

INVALID_DATA = 3
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Progress:
    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def emit(self, kind: str, **fields: Any) -> None:
        self._file.write(json.dumps({"type": kind, "at": time.time(), **fields}) + "\n")
        self._file.flush()


def precision() -> dict[str, Any]:
    """Trainer settings for this node's hardware. TRL turns on bf16 autocast and gradient
    checkpointing by default; on a CPU without native bf16 (no AVX-512 BF16 or AMX) the
    autocast is emulated: a step of batch 4 on the built-in model took 117 s there instead
    of 9.7 s in float32 (AMD EPYC, 2 cores shared with two other training processes).
    CPU jobs train in float32 without checkpointing (small models: memory is not what
    limits them); GPUs use bf16 where they support it."""
    import torch

    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported(), "fp16": False,
                "gradient_checkpointing": True}  # fmt: skip
    return {"bf16": False, "fp16": False, "gradient_checkpointing": False}


def read_chats(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                chat = json.loads(line)
                rows.append(
                    {
                        "messages": chat["messages"],
                        **({"tools": chat["tools"]} if chat.get("tools") else {}),
                    }
                )
    return rows


def thinking_fraction(chats: list[dict[str, Any]]) -> float:
    """The share of chats whose assistant replies all begin with a thinking block: data
    that teaches the model to reason first (its model is then marked `reasoning`)."""
    thinking = 0
    for chat in chats:
        replies = [m.get("content") for m in chat["messages"] if m.get("role") == "assistant"]
        if replies and all(
            isinstance(r, str) and r.lstrip().startswith("<think>") for r in replies
        ):
            thinking += 1
    return round(thinking / len(chats), 4) if chats else 0.0


def token_lengths(tokenizer: Any, chats: list[dict[str, Any]]) -> list[int]:
    lengths = []
    for chat in chats:
        ids = tokenizer.apply_chat_template(
            chat["messages"], tools=chat.get("tools"), tokenize=True
        )
        ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
        lengths.append(len(ids))
    return lengths


def load_tokenizer(base: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base["path"], gguf_file=base.get("gguf_file"))


def load_model(base: dict[str, Any]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(
        base["path"], gguf_file=base.get("gguf_file"), dtype=torch.float32
    )
    if base.get("gguf_file"):
        # The weights are dequantised into ordinary float tensors; what is left is the
        # marker saying they came from a quantised file, which the trainer refuses.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    return model


def run(spec: dict[str, Any]) -> int:
    import torch

    hp = configs.built(SFTConfig, spec["hyperparameters"])
    output = Path(spec["output_dir"])
    output.mkdir(parents=True, exist_ok=True)
    progress = Progress(output / "progress.jsonl")
    torch.set_num_threads(int(spec.get("threads") or 1))
    torch.manual_seed(hp.seed)

    tokenizer = load_tokenizer(spec["base"])
    train = read_chats(Path(spec["train"]))
    valid = read_chats(Path(spec["valid"])) if spec.get("valid") else None
    if _invalid(progress, tokenizer, hp, (("training", train), ("validation", valid or []))):
        return INVALID_DATA
    progress.emit("validated", samples=len(train), tokens=sum(token_lengths(tokenizer, train)),
                  thinking_fraction=thinking_fraction(train))  # fmt: skip

    started = time.monotonic()
    model = load_model(spec["base"])
    progress.emit("loaded", seconds=round(time.monotonic() - started, 2))
    trainer = _trainer(spec, hp, model, tokenizer, train, valid, progress)
    stopping = _Stopping()
    signal.signal(signal.SIGTERM, stopping.ask)
    trainer.add_callback(stopping.callback())
    trainer.train(resume_from_checkpoint=spec.get("resume_from"))
    step = trainer.state.global_step
    if stopping.asked and step < hp.max_steps:
        trainer.save_model(str(output / f"checkpoint-{step}"))  # the trainer saved it too
        progress.emit("paused", step=step)
        return 0
    adapter_dir = output / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    adapter_gguf = _export_gguf(model.config, adapter_dir, output / "adapter.gguf")
    metrics = {"train_loss": _last(trainer, "loss")}
    if valid:
        metrics["valid_loss"] = trainer.evaluate().get("eval_loss")
    progress.emit(
        "done",
        step=step,
        tokens=int(getattr(trainer.state, "num_input_tokens_seen", 0) or _tokens(trainer)),
        adapter_dir=str(adapter_dir),
        adapter_gguf=str(adapter_gguf) if adapter_gguf else None,
        metrics=metrics,
    )
    return 0


def _invalid(
    progress: Progress,
    tokenizer: Any,
    hp: SFTConfig,
    files: tuple[tuple[str, list[dict[str, Any]]], ...],
) -> bool:
    """Reports the first line no training can use (no assistant message, or longer than
    the job's seq_len) as an `invalid` progress line; True if there was one."""
    for name, chats in files:
        for number, chat in enumerate(chats, start=1):
            if not any(m.get("role") == "assistant" for m in chat["messages"]):
                progress.emit("invalid", line=number, file=name,
                              message=f"{name} file line {number}: no assistant message to "
                              "learn from (prompts alone are for reinforcement jobs)")  # fmt: skip
                return True
        for number, length in enumerate(token_lengths(tokenizer, chats), start=1):
            if length > hp.seq_len:
                progress.emit(
                    "invalid",
                    line=number,
                    file=name,
                    message=f"{name} file line {number}: {length} tokens, more than the "
                    f"job's seq_len of {hp.seq_len}",
                )
                return True
    return False


def _trainer(
    spec: dict[str, Any],
    hp: SFTConfig,
    model: Any,
    tokenizer: Any,
    train: list[dict[str, Any]],
    valid: list[dict[str, Any]] | None,
    progress: Progress,
) -> Any:
    from datasets import Dataset  # type: ignore[import-untyped]
    from peft import LoraConfig
    from trl import SFTTrainer  # type: ignore[attr-defined]

    config = _trl_config(spec, hp, evaluate=bool(valid))
    targets = [t for t in LORA_TARGETS if any(n.endswith(t) for n, _ in model.named_modules())]
    lora = LoraConfig(
        r=hp.lora_rank, lora_alpha=hp.lora_alpha, target_modules=targets, task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(train),
        eval_dataset=Dataset.from_list(valid) if valid else None,
        processing_class=tokenizer,
        peft_config=lora,
    )

    trainer.add_callback(_report(progress))
    return trainer


def _trl_config(spec: dict[str, Any], hp: SFTConfig, *, evaluate: bool) -> Any:
    """TRL's own configuration of the trainer, from the recipe's."""
    import torch
    from trl import SFTConfig as TrlSFTConfig  # type: ignore[attr-defined]

    return TrlSFTConfig(
        output_dir=spec["output_dir"],
        max_steps=hp.max_steps,
        per_device_train_batch_size=hp.batch_size,
        learning_rate=hp.learning_rate,
        warmup_steps=math.floor(hp.warmup_fraction * hp.max_steps),
        weight_decay=hp.weight_decay,
        lr_scheduler_type="linear",
        logging_steps=1,
        save_steps=hp.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=hp.save_steps if evaluate else None,
        per_device_eval_batch_size=hp.batch_size,
        max_length=hp.seq_len,
        seed=hp.seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        **precision(),
        disable_tqdm=True,
        dataloader_num_workers=0,
        save_only_model=False,
    )


def _report(progress: Progress) -> Any:
    """A trainer callback that reports steps, evaluations and checkpoints as progress lines."""
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def __init__(self) -> None:
            self.first: tuple[float, float] | None = None  # (tokens, time) at the first log

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **_: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                if "eval_loss" in logs:
                    progress.emit("eval", step=state.global_step, valid_loss=logs["eval_loss"])
                return
            tokens, now = float(logs.get("num_tokens") or 0), time.monotonic()
            if self.first is None:
                self.first = (tokens, now)
            seen, elapsed = tokens - self.first[0], now - self.first[1]
            progress.emit(
                "step",
                step=state.global_step,
                total=state.max_steps,
                loss=float(logs["loss"]),
                tokens=int(tokens),
                tokens_per_s=round(seen / elapsed, 1) if elapsed > 0 else None,
                learning_rate=float(logs.get("learning_rate") or 0.0),
                mean_token_accuracy=logs.get("mean_token_accuracy"),
            )

        def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            progress.emit(
                "checkpoint",
                step=state.global_step,
                path=str(path),
                metrics={
                    "train_loss": _last_of(state.log_history, "loss"),
                    "valid_loss": _last_of(state.log_history, "eval_loss"),
                    "train_mean_token_accuracy": _last_of(state.log_history, "mean_token_accuracy"),
                },
            )

    return Report()


class _Stopping:
    """SIGTERM: save at the end of the current step, then stop."""

    def __init__(self) -> None:
        self.asked = False

    def ask(self, *_: object) -> None:
        self.asked = True

    def callback(self) -> Any:
        from transformers import TrainerCallback

        outer = self

        class Stop(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> Any:
                if outer.asked:
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return Stop()


def _last_of(history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(history):
        if key in entry:
            return float(entry[key])
    return None


def _last(trainer: Any, key: str) -> float | None:
    return _last_of(trainer.state.log_history, key)


def _tokens(trainer: Any) -> int:
    values = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    return int(values[-1]) if values else 0


def _export_gguf(config: Any, adapter_dir: Path, out: Path) -> Path | None:
    """The adapter in the form llama.cpp serves, for architectures that have it."""
    from souverain.training import lora_gguf

    if config.model_type not in lora_gguf.LLAMA_FAMILY:
        return None
    lora_gguf.convert(
        adapter_dir,
        out,
        architecture=config.model_type,
        n_layers=config.num_hidden_layers,
        n_heads=config.num_attention_heads,
        n_kv_heads=config.num_key_value_heads,
    )
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(run(spec))


if __name__ == "__main__":
    main()
