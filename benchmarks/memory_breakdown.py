"""Where a CPU training step's memory goes: togi's step on a demo-sized batch, one lever at a time.

    .venv/bin/python benchmarks/memory_breakdown.py            # 5 variants, about 7 minutes on 2 cores
    .venv/bin/python benchmarks/memory_breakdown.py --steps 2

The step is togi's CPU path (padding-free row, LM head at labelled positions only, attention inside each
example: way 4 of ``cpu_levers.py``) for SmolLM2-135M-Instruct with the demo's LoRA (r=16, alpha 32,
dropout 0.05, every linear layer of the blocks), fp32, on one fixed batch of 6 examples of 120 to 600
tokens (2,040 real tokens, the first half of each is prompt): the size of the demo's largest batches.
Each variant runs in its own process, because glibc's allocator settings must be set before it starts
and a process's peak RSS cannot be reset:

  demo          as `make demo` trains
  no-dropout    LoRA dropout 0: PEFT gives each LoRA module a dropout of its own input, so q, k and v
                each keep a masked copy of the same hidden states for the backward pass
  checkpointing gradient checkpointing (non-reentrant): each block's activations are recomputed
  mmap-128k     glibc's MALLOC_MMAP_THRESHOLD_=131072: every tensor over 128 KiB gets its own mapping,
                returned to the system when freed, instead of heap memory glibc keeps
  checkpointing+mmap-128k   both

Per variant: RSS after loading, RSS at the end of the last forward pass (live tensors plus what the
allocator keeps), peak RSS, and the median seconds of a forward + backward after a warm-up step.
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
    "demo": ({}, {}),
    "no-dropout": ({"lora_dropout": 0.0}, {}),
    "checkpointing": ({"checkpointing": True}, {}),
    "mmap-128k": ({}, {"MALLOC_MMAP_THRESHOLD_": "131072"}),
    "checkpointing+mmap-128k": ({"checkpointing": True}, {"MALLOC_MMAP_THRESHOLD_": "131072"}),
}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def measure(options: dict, steps: int) -> dict:
    """One variant, in this process: load, then ``steps`` forward + backward passes."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    from togi.models.embedded import ensure_embedded_model
    from togi.train.attention import per_example_attention
    from togi.train.loss import compact_lm_loss

    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(), dtype=torch.float32, attn_implementation="sdpa")
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=options.get("lora_dropout", 0.05),
                                                       target_modules="all-linear", task_type="CAUSAL_LM"))
    if options.get("checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    generator = torch.Generator().manual_seed(0)
    ids = [torch.randint(100, 40000, (length,), generator=generator) for length in LENGTHS]
    row = {"input_ids": torch.cat(ids)[None],
           "labels": torch.cat([torch.cat([torch.full((n // 2,), -100), x[n // 2:]]) for n, x in zip(LENGTHS, ids)])[None],
           "position_ids": torch.cat([torch.arange(n) for n in LENGTHS])[None]}
    loaded = rss_mb()
    seconds, after_forward = [], 0.0
    for _ in range(steps + 1):
        start = time.perf_counter()
        with per_example_attention(model):
            loss = compact_lm_loss(model, row).loss
        after_forward = rss_mb()
        loss.backward()
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
    demo = results["demo"]
    print("\n| variant | RSS after load (GiB) | RSS after forward (GiB) | peak RSS (GiB) | step (s) | peak vs demo | step time vs demo |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['loaded_mb'] / 1024:.2f} | {r['after_forward_mb'] / 1024:.2f} | {r['peak_mb'] / 1024:.2f} | "
              f"{r['step_seconds']:.1f} | {r['peak_mb'] / demo['peak_mb']:.2f}x | {r['step_seconds'] / demo['step_seconds']:.2f}x |")


if __name__ == "__main__":
    main()
