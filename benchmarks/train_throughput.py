"""Training throughput: togi against the plain TRL + PEFT a user would otherwise run, and against LLaMA-Factory.

    make bench-setup                                             # once: LLaMA-Factory's venv, for d
    .venv/bin/python benchmarks/train_throughput.py              # CPU: a, b, c, d on both shapes (see RESULTS.md)
    .venv/bin/python benchmarks/train_throughput.py --quick      # smoke run: fewer examples, one round
    .venv/bin/python benchmarks/train_throughput.py --shape short --variants c,d
    .venv/bin/python benchmarks/train_throughput.py --repeats 3  # a, b, c, d, a, b, c, d, ...: medians
    .venv/bin/python benchmarks/train_throughput.py --threads 1  # every variant, togi too, on 1 thread
    .venv/bin/python benchmarks/train_throughput.py --device cuda --examples 2000 --baseline-steps 50

One SFT LoRA job, SmolLM2-135M-Instruct with LoRA r=16 on every linear layer of its blocks, the same
data, maximum length, learning rate, schedule and batch (``SHAPES``: no example is cut), run four ways:

  a  plain TRL ``SFTTrainer`` + PEFT with TRL's defaults: bf16 autocast (``use_cpu=True`` on a CPU, which
     TRL asks for), gradient checkpointing, padded batches in random order;
  b  plain TRL tuned as a careful user tunes it: the device's right precision (``bf16_is_native``: bf16 on a GPU
     and on a CPU with native bf16 instructions, as togi chooses; fp32 on other CPUs), packing
     (best-fit-decreasing rows of up to the maximum length, trained padding-free; one row per step), no
     gradient checkpointing;
  c  togi (``togi.train``) with its defaults for the device;
  d  LLaMA-Factory (``llamafactory_child.py``, in the venv ``make bench-setup`` builds, since it pins its own
     transformers, peft and trl): the model's own chat template, the device's right precision, no gradient
     checkpointing, padded batches in random order.

Two data shapes, each with its own batch and maximum length, the same for every variant (``--shape``):

  mixed  chat examples of about 45 to 1,500 tokens, most short, with a long tail, Japanese and English;
         batch 4, maximum length 2,048;
  short  short uniform calculator chats of about 40 tokens; batch 8, maximum length 256.

b, c and d train one epoch over the same examples, so they see exactly the same tokens; a, hundreds of
times slower per matrix product in bf16 on a CPU without native bf16, trains ``--baseline-steps``
steps of its own random order. Throughput counts real tokens only (prompt and answer, never padding:
the attention mask's ones, or the length of a padding-free row), from the start of training to the end
of the last step. Each variant runs in its own process, so peak memory is per variant (peak RSS on a
CPU, ``torch.cuda.max_memory_allocated`` on a GPU); with ``--repeats`` the variants alternate, so that
load from other processes falls on all of them alike, and each line says how many cores other
processes kept busy meanwhile and which torch thread counts the variant ran with. The data is built
here, deterministically (``chat_data.py``), and written as one JSONL file per shape.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path.insert(0, str(BENCHMARKS))

from chat_data import build_calculator_records, build_chat_records  # noqa: E402

VARIANTS = {"a": "TRL defaults", "b": "TRL tuned", "c": "togi", "d": "LLaMA-Factory"}
LLAMAFACTORY_PYTHON = BENCHMARKS / ".venv-llamafactory" / "bin" / "python"


@dataclass(frozen=True)
class Shape:
    """A data shape with the batch and maximum length trained on it: every variant reads them from here."""

    description: str
    build: Callable[[int, Any], list[dict[str, Any]]]  # (examples, tokenizer) -> chat records
    examples: int
    quick_examples: int
    batch_size: int
    max_length: int


SHAPES = {
    "mixed": Shape("mixed-length chats, Japanese and English",
                   lambda count, tokenizer: build_chat_records(count, seed=0, tokenizer=tokenizer),
                   examples=24, quick_examples=12, batch_size=4, max_length=2048),
    "short": Shape("short uniform calculator chats", lambda count, tokenizer: build_calculator_records(count, seed=0),
                   examples=64, quick_examples=16, batch_size=8, max_length=256),
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05}
LEARNING_RATE, SCHEDULER, WARMUP_RATIO, WEIGHT_DECAY, MAX_GRAD_NORM, SEED = 2e-4, "cosine", 0.1, 0.01, 1.0, 42
# Peak dense bf16 matrix throughput (FLOP/s), for MFU on a GPU.
GPU_PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


# --- one variant, in its own process ---------------------------------------------------------------------

def bf16_is_native(device: str) -> bool:
    """Whether the device computes bf16 natively: a GPU (the harness runs CUDA GPUs with bf16), or a CPU with
    AVX512-BF16 or AMX, where bf16 matrix products are faster than fp32 ones; elsewhere on a CPU they are hundreds
    of times slower. The rule togi's device plan follows, so b and d get the precision c gets."""
    if device == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def step_clock(records: list[dict[str, Any]], tokens_key: str = "num_tokens") -> Any:
    """A TrainerCallback appending, at the start of training and at every logged step, the wall time and the
    real tokens seen so far, the logs' ``tokens_key``: TRL's ``num_tokens`` (attention-mask ones, or the length
    of a padding-free row), or the Trainer's ``num_input_tokens_seen`` counted as ``"non_padding"`` (also
    attention-mask ones)."""
    import torch
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            records.append({"step": 0, "time": time.perf_counter(), "tokens_seen": 0})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                records.append({"step": state.global_step, "time": time.perf_counter(), "tokens_seen": int(logs[tokens_key]),
                                "loss": float(logs["loss"]), "threads": torch.get_num_threads()})

    return StepClock()


def run_trl(variant: str, shape: Shape, model_dir: Path, data_file: Path, device: str, baseline_steps: int, work: Path,
            records: list) -> None:
    import datasets
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    # Prompt-completion rows: TRL then takes the loss on the answer only, as togi does.
    rows = datasets.load_dataset("json", data_files=str(data_file), split="train")
    rows = rows.map(lambda row: {"prompt": row["messages"][:-1], "completion": row["messages"][-1:]}, remove_columns=["messages"])
    settings = dict(
        output_dir=str(work / "trl"), per_device_train_batch_size=shape.batch_size, gradient_accumulation_steps=1, num_train_epochs=1,
        learning_rate=LEARNING_RATE, lr_scheduler_type=SCHEDULER, warmup_steps=WARMUP_RATIO, weight_decay=WEIGHT_DECAY,
        max_grad_norm=MAX_GRAD_NORM, seed=SEED, max_length=shape.max_length, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, use_cpu=device == "cpu",  # TRL's default bf16 refuses to start on a CPU without use_cpu
    )
    if variant == "a":
        settings.update(max_steps=baseline_steps)
    else:
        settings.update(bf16=bf16_is_native(device), packing=True, gradient_checkpointing=False, per_device_train_batch_size=1)
    trainer = SFTTrainer(
        model=str(model_dir), args=SFTConfig(**settings), train_dataset=rows, callbacks=[step_clock(records)],
        peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"], target_modules="all-linear",
                               task_type="CAUSAL_LM"),
    )
    trainer.train()


def run_togi(shape: Shape, model_dir: Path, data_file: Path, work: Path, records: list) -> None:
    from togi import load_config
    from togi.train import train

    config = load_config(None, [
        f"model={model_dir}", "method=lora", f"data.train_file={data_file}", f"output_dir={work / 'togi'}", "data.val_ratio=0",
        f"data.max_length={shape.max_length}", f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}", f"lora.dropout={LORA['dropout']}",
        "lora.targets=full", "training.epochs=1", f"training.batch_size={shape.batch_size}", "training.gradient_accumulation=1",
        f"training.learning_rate={LEARNING_RATE}", f"training.scheduler={SCHEDULER}", f"training.warmup_ratio={WARMUP_RATIO}",
        f"training.weight_decay={WEIGHT_DECAY}", f"training.max_grad_norm={MAX_GRAD_NORM}", f"training.seed={SEED}",
        "monitoring.samples=0", "monitoring.save_every=1000000",
    ])
    train(config, log=lambda message: None, callbacks=[step_clock(records)])


def peak_memory_bytes(device: str) -> int:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def child(args: argparse.Namespace) -> None:
    records: list[dict[str, Any]] = []
    shape = SHAPES[args.shape]
    with tempfile.TemporaryDirectory(prefix=f"togi-bench-{args.child}-") as work:
        if args.child == "c":
            run_togi(shape, Path(args.model), Path(args.data), Path(work), records)
        else:
            run_trl(args.child, shape, Path(args.model), Path(args.data), args.device, args.baseline_steps, Path(work), records)
    Path(args.result).write_text(json.dumps({"records": records, "peak_memory_bytes": peak_memory_bytes(args.device)}))


# --- the parent: data, alternation, report ------------------------------------------------------------------

def measured(records: list[dict[str, Any]]) -> dict[str, float]:
    """Real tokens per second from the start of training to the end of the last step, and the median step."""
    seconds = records[-1]["time"] - records[0]["time"]
    tokens = records[-1]["tokens_seen"] - records[0]["tokens_seen"]
    durations = [later["time"] - earlier["time"] for earlier, later in zip(records, records[1:])]
    return {"tokens_per_second": tokens / seconds, "step_seconds": statistics.median(durations), "steps": len(durations),
            "tokens": tokens, "tokens_per_step": tokens / len(durations), "seconds": seconds}


def machine_cpu_ticks() -> tuple[int, int]:
    """(all, busy) CPU time of the machine so far, in clock ticks summed over its CPUs (Linux)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields), sum(fields) - fields[3] - fields[4]


def children_cpu_ticks() -> int:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((usage.ru_utime + usage.ru_stime) * os.sysconf("SC_CLK_TCK"))


def run_variant(variant: str, args: argparse.Namespace, shape_name: str, model_dir: Path, data_file: Path,
                result_file: Path) -> dict[str, Any]:
    shared = ["--shape", shape_name, "--model", str(model_dir), "--data", str(data_file), "--result", str(result_file),
              "--device", args.device]
    if variant == "d":  # under LLaMA-Factory's own venv: it pins its own transformers, peft and trl
        command = [str(LLAMAFACTORY_PYTHON), str(BENCHMARKS / "llamafactory_child.py"), *shared]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--child", variant, "--baseline-steps", str(args.baseline_steps), *shared]
    environment = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
    started, machine_before, children_before = time.perf_counter(), machine_cpu_ticks(), children_cpu_ticks()
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=environment)
    if completed.returncode != 0:
        sys.exit(f"variant {variant} failed:\n{completed.stderr[-4000:]}")
    machine_after, children_after = machine_cpu_ticks(), children_cpu_ticks()
    elapsed_ticks = (machine_after[0] - machine_before[0]) / os.cpu_count()
    others = (machine_after[1] - machine_before[1] - (children_after - children_before)) / elapsed_ticks
    outcome = json.loads(result_file.read_text())
    records = outcome["records"]
    return {**measured(records), "peak_memory_gib": outcome["peak_memory_bytes"] / 2**30, "wall_seconds": time.perf_counter() - started,
            "final_loss": records[-1].get("loss"), "other_processes_cores": max(0.0, others),
            "threads": sorted({record["threads"] for record in records if "threads" in record})}


def machine_description(device: str) -> str:
    if device == "cuda":
        import torch

        return f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores"
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM"


def git_commit() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    changed = subprocess.run(["git", "status", "--porcelain", "--", "src", "benchmarks"], cwd=REPO, capture_output=True, text=True).stdout
    return commit + (" + uncommitted changes in src/ or benchmarks/" if changed.strip() else "")


def data_summary(records: list[dict[str, Any]], tokenizer: Any) -> dict[str, float]:
    def tokens(messages: list[dict[str, str]], generation_prompt: bool = False) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    lengths = [tokens(record["messages"]) for record in records]
    answers = sum(length - tokens(record["messages"][:-1], True) for length, record in zip(lengths, records))
    ordered = sorted(lengths)
    return {"examples": len(lengths), "tokens": sum(lengths), "min": ordered[0], "median": ordered[len(ordered) // 2], "max": ordered[-1],
            "p90": ordered[int(0.9 * (len(ordered) - 1))], "answer_share": answers / sum(lengths),
            "attention_context": sum(length * length for length in lengths) / sum(lengths)}


def flops_per_token(model_dir: Path, attention_context: float) -> float:
    """Model FLOPs per token of LoRA training: 4N (forward, and the backward to the activations; no weight gradients;
    6N would be full fine-tuning), N counting every matrix product (the LM head too, the embedding lookup not),
    plus causal attention: Q·K and A·V over ``attention_context`` keys, halved, times 3 for forward and backward."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads", heads)
    per_layer = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * config["intermediate_size"]
    parameters = layers * per_layer + hidden * config["vocab_size"]
    attention = 3 * 2 * 2 * layers * heads * head_dim * attention_context / 2
    return 4 * parameters + attention


def compare(args: argparse.Namespace, shape_name: str, chosen: list[str], model_dir: Path, tokenizer: Any, work: Path) -> None:
    """Every chosen variant on one shape's data, alternating over ``--repeats`` rounds, then the shape's table."""
    shape = SHAPES[shape_name]
    records = shape.build(args.examples or (shape.quick_examples if args.quick else shape.examples), tokenizer)
    data_file = work / f"{shape_name}.jsonl"
    data_file.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    data = data_summary(records, tokenizer)
    print(f"\n## shape {shape_name}: {shape.description}\n")
    print(f"data: {data['examples']} chat examples, {data['tokens']} tokens; per example min {data['min']}, median {data['median']}, "
          f"p90 {data['p90']}, max {data['max']}; {data['answer_share']:.0%} of the tokens are answers (the loss)")
    print(f"job: {model_dir.name} LoRA r={LORA['r']} alpha {LORA['alpha']} on every linear layer, batch {shape.batch_size}, maximum length "
          f"{shape.max_length}; b, c and d one epoch, a {args.baseline_steps} step(s); b and d in "
          f"{'bf16 (native here)' if bf16_is_native(args.device) else 'fp32 (bf16 is not native here)'}\n", flush=True)

    results: dict[str, list[dict[str, Any]]] = {variant: [] for variant in chosen}
    for round_number in range(1, args.repeats + 1):
        for variant in chosen:
            figures = run_variant(variant, args, shape_name, model_dir, data_file, work / f"{shape_name}-{variant}-{round_number}.json")
            results[variant].append(figures)
            print(f"round {round_number}, {variant} ({VARIANTS[variant]}): {figures['tokens_per_second']:.1f} tokens/s, "
                  f"{figures['steps']} steps ({figures['tokens']} tokens) in {figures['seconds']:.0f} s, "
                  f"peak {figures['peak_memory_gib']:.2f} GiB, final loss {figures['final_loss']:.3f}, torch threads {figures['threads']}; "
                  f"{figures['wall_seconds']:.0f} s in all, other processes kept {figures['other_processes_cores']:.1f} cores busy",
                  flush=True)

    def median(variant: str, key: str) -> float:
        return statistics.median(figures[key] for figures in results[variant])

    memory = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    print(f"\n| variant | tokens/s | step time (s) | tokens/step | {memory} (GiB) | c/x tokens/s | x/c memory |")
    print("|---|---|---|---|---|---|---|")
    for variant in chosen:
        speed = f"{median('c', 'tokens_per_second') / median(variant, 'tokens_per_second'):.2f}x" if "c" in results else "-"
        memory_ratio = f"{median(variant, 'peak_memory_gib') / median('c', 'peak_memory_gib'):.2f}x" if "c" in results else "-"
        print(f"| {variant}: {VARIANTS[variant]} | {median(variant, 'tokens_per_second'):.1f} | {median(variant, 'step_seconds'):.1f} | "
              f"{median(variant, 'tokens_per_step'):.0f} | {median(variant, 'peak_memory_gib'):.2f} | {speed} | {memory_ratio} |")
    if args.device == "cuda":
        import torch

        peak = next((value for name, value in GPU_PEAK_BF16.items() if name in torch.cuda.get_device_name(0)), None)
        per_token = flops_per_token(model_dir, data["attention_context"])
        for variant in chosen:
            achieved = median(variant, "tokens_per_second") * per_token
            print(f"MFU {variant}: {f'{achieved / peak:.1%}' if peak else 'unknown peak'} "
                  f"({achieved / 1e12:.2f} TFLOP/s at {per_token / 1e9:.2f} GFLOP per token)")
    if "c" in results:
        print("\n" + ", ".join(f"c/{variant} = {median('c', 'tokens_per_second') / median(variant, 'tokens_per_second'):.2f}x tokens/s"
                               for variant in chosen if variant != "c"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--shape", choices=("mixed", "short", "both"), default="both", help="the data shape(s): a table each")
    parser.add_argument("--examples", type=int, help="chat examples per shape, for one epoch of b, c and d (default: mixed "
                        f"{SHAPES['mixed'].examples}, short {SHAPES['short'].examples})")
    parser.add_argument("--baseline-steps", type=int, default=1, help="steps of one batch for a")
    parser.add_argument("--repeats", type=int, default=1, help="rounds of the variants; the tables give medians")
    parser.add_argument("--variants", default="a,b,c,d", help="d needs `make bench-setup` first")
    parser.add_argument("--model", help="a local HF model directory (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every variant, togi included (default: torch's, one per "
                        "core; togi then lowers its own count while other processes keep cores busy)")
    parser.add_argument("--quick", action="store_true", help="smoke run: one round of fewer examples (mixed "
                        f"{SHAPES['mixed'].quick_examples}, short {SHAPES['short'].quick_examples})")
    parser.add_argument("--child", choices=("a", "b", "c"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    chosen = [variant for variant in args.variants.split(",") if variant]
    if unknown := [variant for variant in chosen if variant not in VARIANTS]:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    if "d" in chosen and not LLAMAFACTORY_PYTHON.exists():
        sys.exit(f"variant d needs LLaMA-Factory's venv ({LLAMAFACTORY_PYTHON.relative_to(REPO)}): run `make bench-setup` first")
    if args.quick:
        args.repeats = 1

    from transformers import AutoTokenizer

    from togi.models.embedded import ensure_embedded_model

    model_dir = Path(args.model).resolve() if args.model else ensure_embedded_model()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    threads = f"OMP_NUM_THREADS={args.threads} for all" if args.threads else f"torch's default ({os.cpu_count()} cores)"
    print(f"machine: {machine_description(args.device)}\ndate: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n"
          f"command: python {' '.join([sys.argv[0]] + sys.argv[1:])}\ncommit: {git_commit()}\nthreads: {threads}", flush=True)
    with tempfile.TemporaryDirectory(prefix="togi-bench-") as work:
        for shape_name in SHAPES if args.shape == "both" else [args.shape]:
            compare(args, shape_name, chosen, model_dir, tokenizer, Path(work))


if __name__ == "__main__":
    main()
