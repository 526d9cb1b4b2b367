"""Variant d of ``train_throughput.py``: the same LoRA job through LLaMA-Factory's own Python entry (``run_exp``).

The harness runs this under ``benchmarks/.venv-llamafactory/bin/python`` (``make bench-setup``): LLaMA-Factory pins
its own transformers, peft and trl. It imports nothing of togi, only the harness's settings and step clock
(``train_throughput`` imports the standard library alone at module level).

Fairness: no ``template`` is named, so LLaMA-Factory parses the model's own chat template from its tokenizer
(its built-in ``smollm2`` template differs: its default system prompt ends in a full stop, SmolLM2's does not),
and a callback checks, before the first step, that every tokenized example is exactly the model's chat template
(``tokenizer.apply_chat_template``) and that the loss covers exactly the answer's tokens. Real tokens are the
Trainer's ``num_input_tokens_seen`` counted as ``"non_padding"``: each batch's attention-mask ones, as TRL's
``num_tokens``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from train_throughput import (
    LEARNING_RATE,
    LORA,
    MAX_GRAD_NORM,
    SCHEDULER,
    SEED,
    SHAPES,
    WARMUP_RATIO,
    WEIGHT_DECAY,
    bf16_is_native,
    peak_memory_bytes,
    step_clock,
)

DATASET = "bench"
IGNORE_INDEX = -100  # LLaMA-Factory's label for tokens outside the loss


def write_dataset_info(data_file: Path, dataset_dir: Path) -> None:
    """LLaMA-Factory reads a dataset by name from ``dataset_info.json``; the harness's JSONL holds OpenAI
    ``messages`` records, which LLaMA-Factory reads as sharegpt with OpenAI's tags."""
    tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant", "system_tag": "system"}
    info = {DATASET: {"file_name": str(data_file.resolve()), "formatting": "sharegpt", "columns": {"messages": "messages"}, "tags": tags}}
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info))


def same_tokens_check(model_dir: Path, data_file: Path) -> Any:
    """A TrainerCallback failing the run before its first step unless LLaMA-Factory tokenized every example
    exactly as the model's chat template does, with the loss on the answer's tokens only (those after the
    generation prompt), as for the other variants."""
    from transformers import AutoTokenizer, TrainerCallback

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def ids(messages: list[dict[str, str]], generation_prompt: bool = False) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokens_and_answer_length(messages: list[dict[str, str]]) -> tuple[tuple[int, ...], int]:
        full = ids(messages)
        return tuple(full), len(full) - len(ids(messages[:-1], generation_prompt=True))

    records = [json.loads(line) for line in data_file.read_text(encoding="utf-8").splitlines()]
    expected = Counter(tokens_and_answer_length(record["messages"]) for record in records)

    class SameTokens(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
            rows = train_dataloader.dataset
            tokenized = Counter((tuple(input_ids), sum(label != IGNORE_INDEX for label in labels))
                                for input_ids, labels in zip(rows["input_ids"], rows["labels"]))
            if differing := (expected - tokenized).total():
                raise RuntimeError(f"LLaMA-Factory tokenized {differing} of {expected.total()} examples differently from the model's "
                                   "chat template (tokens or answer-only loss): the comparison would not be fair")

    return SameTokens()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=tuple(SHAPES), required=True)
    parser.add_argument("--model", required=True, help="a local HF model directory")
    parser.add_argument("--data", required=True, help="the shape's JSONL of chat records")
    parser.add_argument("--result", required=True, help="where the step records and peak memory go, as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()

    from llamafactory.train.tuner import run_exp

    shape, model_dir, data_file = SHAPES[args.shape], Path(args.model), Path(args.data)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="togi-bench-d-") as work:
        write_dataset_info(data_file, Path(work))
        run_exp(args=dict(
            model_name_or_path=str(model_dir), stage="sft", do_train=True, finetuning_type="lora", lora_target="all",
            lora_rank=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
            dataset=DATASET, dataset_dir=work, cutoff_len=shape.max_length, output_dir=str(Path(work) / "out"),
            per_device_train_batch_size=shape.batch_size, gradient_accumulation_steps=1, num_train_epochs=1,
            learning_rate=LEARNING_RATE, lr_scheduler_type=SCHEDULER, warmup_steps=WARMUP_RATIO, weight_decay=WEIGHT_DECAY,
            max_grad_norm=MAX_GRAD_NORM, seed=SEED, bf16=bf16_is_native(args.device), use_cpu=args.device == "cpu", disable_gradient_checkpointing=True,
            include_num_input_tokens_seen="non_padding", logging_steps=1, save_strategy="no", report_to="none",
            disable_tqdm=True,
        ), callbacks=[same_tokens_check(model_dir, data_file), step_clock(records, tokens_key="num_input_tokens_seen")])
    Path(args.result).write_text(json.dumps({"records": records, "peak_memory_bytes": peak_memory_bytes(args.device)}))


if __name__ == "__main__":
    main()
