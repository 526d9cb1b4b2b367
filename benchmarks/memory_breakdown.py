"""Where a CPU training step's memory goes: one demo-sized batch, one lever at a time.

    .venv/bin/python benchmarks/memory_breakdown.py            # 8 variants, about 10 minutes on 2 cores
    .venv/bin/python benchmarks/memory_breakdown.py --steps 2

The step is togi's CPU path (a padding-free row from TRL's collator, the LM head at labelled positions only,
attention inside each example) for SmolLM2-135M-Instruct with the demo's LoRA (r=16, alpha 32, dropout 0.05,
every linear layer of the blocks), fp32, on one fixed batch of 6 examples of 120 to 600 tokens (2,040 real
tokens, the first half of each is prompt): the size of the demo's largest batches. Each variant runs in its own
process, because glibc's allocator settings must be set before it starts and a process's peak RSS cannot be
reset:

  before              as togi trained before issue 21: PEFT's LoRA layers, the whole batch in one pass
  before, dropout 0   the same with LoRA dropout 0 (what PEFT's dropout costs)
  cpu-lora            togi's CPU LoRA layer (``train/cpu_lora.py``), the whole batch in one pass
  togi                togi now: the CPU LoRA layer and passes of at most 512 tokens (``training.micro_batch_tokens``
                      auto, ``train/micro_batches.py``)
  togi, 1024-token passes
  togi + checkpointing    gradient checkpointing (non-reentrant) as well
  togi + mmap-128k    glibc's MALLOC_MMAP_THRESHOLD_=131072: every tensor over 128 KiB gets its own mapping,
                      returned when freed, so RSS is close to the live tensors
  togi + trim         glibc's malloc_trim(0) after each pass: freed heap returned between passes

Per variant: RSS after loading, the largest RSS at the end of a forward pass (live tensors plus what the
allocator keeps), peak RSS, and the median seconds of a step (every pass's forward and backward) after a
warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

LENGTHS = (120, 240, 300, 380, 400, 600)
VARIANTS = {
    "before": ({"peft_lora": True, "micro_batch_tokens": None}, {}),
    "before, dropout 0": ({"peft_lora": True, "micro_batch_tokens": None, "lora_dropout": 0.0}, {}),
    "cpu-lora": ({"micro_batch_tokens": None}, {}),
    "togi": ({}, {}),
    "togi, 1024-token passes": ({"micro_batch_tokens": 1024}, {}),
    "togi + checkpointing": ({"checkpointing": True}, {}),
    "togi + mmap-128k": ({}, {"MALLOC_MMAP_THRESHOLD_": "131072"}),
    "togi + trim": ({"trim": True}, {}),
    "bf16 before": ({"bf16": True, "peft_lora": True, "micro_batch_tokens": None}, {}),
    "bf16 cpu-lora": ({"bf16": True, "micro_batch_tokens": None}, {}),
    "bf16 togi": ({"bf16": True}, {}),
    "bf16 togi 1024": ({"bf16": True, "micro_batch_tokens": 1024}, {}),
    "bf16 togi prefix": ({"bf16": True, "prefix": 50, "share": True}, {}),
    "bf16 togi prefix noshare": ({"bf16": True, "prefix": 50}, {}),
}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def measure(options: dict, steps: int) -> dict:
    """One variant, in this process: load, then ``steps`` forward + backward passes."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from togi.models.embedded import ensure_embedded_model
    from togi.train.attention import per_example_attention
    from togi.config import CPU_MICRO_BATCH_TOKENS
    from togi.train.cpu_lora import use_cpu_lora_layers
    from togi.train.loss import compact_lm_loss
    from togi.train.micro_batches import split_padding_free_batch
    from togi.train.shared_prefix import share_common_prefix

    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(), dtype=torch.float32, attn_implementation="sdpa")
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=options.get("lora_dropout", 0.05), target_modules="all-linear",
                           task_type="CAUSAL_LM")
    if not options.get("peft_lora"):
        use_cpu_lora_layers(lora)
    model = peft.get_peft_model(model, lora)
    if options.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    generator = torch.Generator().manual_seed(0)
    examples = []
    system_prompt = torch.randint(100, 40000, (options.get("prefix", 0),), generator=generator).tolist()
    for length in LENGTHS:
        ids = torch.randint(100, 40000, (length,), generator=generator).tolist()
        ids[: len(system_prompt)] = system_prompt
        examples.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2:]})
    # The padding-free row exactly as togi's trainer gets it from TRL's collator: with each example's bounds
    # (cu_seq_lens_*), which togi's per-example attention needs.
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    budget = options.get("micro_batch_tokens", CPU_MICRO_BATCH_TOKENS["bf16" if options.get("bf16") else "fp32"])
    rows = split_padding_free_batch(batch, budget) if budget else [batch]
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    loaded = rss_mb()
    seconds, after_forward = [], 0.0
    for _ in range(steps + 1):
        start = time.perf_counter()
        for row in rows:
            if options.get("share"):
                row = share_common_prefix(row)
            with per_example_attention(model), torch.autocast("cpu", dtype=torch.bfloat16, enabled=options.get("bf16", False)):
                loss = compact_lm_loss(model, row, num_items_in_batch=labelled).loss
            after_forward = max(after_forward, rss_mb())
            loss.backward()
            if options.get("trim"):
                libc.malloc_trim(0)
        model.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return {"loaded_mb": loaded, "after_forward_mb": after_forward, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_seconds": statistics.median(seconds[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant, after one warm-up step")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # the child process's side
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(VARIANTS[args.variant][0], args.steps)))
        return
    print(f"batch: {len(LENGTHS)} examples of {', '.join(map(str, LENGTHS))} tokens ({sum(LENGTHS)} real tokens, half prompt); "
          f"torch's default threads; {args.steps} timed steps after a warm-up, each variant in its own process")
    results = {}
    for name, (_, environment) in VARIANTS.items():
        child = subprocess.run([sys.executable, __file__, "--variant", name, "--steps", str(args.steps)], capture_output=True, text=True,
                               env={**os.environ, **environment}, check=True)
        results[name] = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  {name} done", flush=True)
    before = results["before"]
    print("\n| variant | RSS after load (GiB) | RSS after forward (GiB) | peak RSS (GiB) | step (s) | peak vs before | step time vs before |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['loaded_mb'] / 1024:.2f} | {r['after_forward_mb'] / 1024:.2f} | {r['peak_mb'] / 1024:.2f} | "
              f"{r['step_seconds']:.1f} | {r['peak_mb'] / before['peak_mb']:.2f}x | {r['step_seconds'] / before['step_seconds']:.2f}x |")


if __name__ == "__main__":
    main()
