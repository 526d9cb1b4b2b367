"""togi's CPU training levers one at a time, on one fixed batch.

    .venv/bin/python benchmarks/cpu_levers.py              # 3 rounds, about 5 minutes on 2 cores
    .venv/bin/python benchmarks/cpu_levers.py --rounds 1

One forward and backward pass of SmolLM2-135M-Instruct with LoRA (r=16, every linear layer of its
blocks) on a fixed batch of four examples of 60, 150, 300 and 700 tokens whose first halves are
prompt (no loss), computed four ways, alternating round by round:

  1  padded batch, TRL's fused LM head         TRL's SFTTrainer without packing (on a CPU the head
                                               projects every position, padding and prompt too)
  2  padding-free row, TRL's fused LM head     TRL with packing / padding_free: SDPA under a
                                               block-diagonal mask over the whole row
  3  padding-free row, labelled positions only  + togi's LM head (``togi.train.loss``)
  4  padding-free row, labelled positions only, attention inside each example   togi's CPU path
     (``togi.train.attention``)

The comparison runs on one thread, so that other processes' load distorts it as little as possible;
the CPU time this process used is reported beside the wall time. Then the last way runs once on one
thread and once on torch's default thread count, with the cores other processes kept busy meanwhile:
the thread lever (``togi.train.threads``) is worth something only when they are busy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

LENGTHS = (60, 150, 300, 700)


def fixed_batch() -> list[dict[str, list[int]]]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length in LENGTHS:
        ids = torch.randint(100, 40000, (length,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (length // 2) + ids[length // 2 :]})
    return examples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import peft
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    from togi.models.embedded import ensure_embedded_model
    from togi.train.attention import per_example_attention
    from togi.train.loss import compact_lm_loss
    from togi.train.threads import CpuUsage

    default_threads = torch.get_num_threads()
    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(), dtype=torch.float32, attn_implementation="sdpa")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what TRL's SFTTrainer does
    model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear",
                                                       task_type="CAUSAL_LM"))
    model.train()
    examples = fixed_batch()
    padded = DataCollatorForLanguageModeling(pad_token_id=2)(examples)
    row = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True)(examples)

    def trl_head(batch):
        return model(**batch, use_cache=False, fused_lm_head=True).loss

    def togi_per_example(batch):
        with per_example_attention(model):
            return compact_lm_loss(model, batch).loss

    ways = {
        "1 padded, TRL head": lambda: trl_head(padded),
        "2 padding-free, TRL head": lambda: trl_head(row),
        "3 padding-free, labelled-only head": lambda: compact_lm_loss(model, row).loss,
        "4 padding-free, labelled-only head, per-example attention": lambda: togi_per_example(row),
    }

    def timed(way) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        way().backward()
        model.zero_grad()
        return time.perf_counter() - wall, time.process_time() - cpu

    print(f"batch: {len(LENGTHS)} examples of {', '.join(map(str, LENGTHS))} tokens ({sum(LENGTHS)} real tokens, "
          f"{padded['input_ids'].numel()} padded); one thread; wall and CPU seconds per forward + backward")
    torch.set_num_threads(1)
    timed(ways["4 padding-free, labelled-only head, per-example attention"])  # warm-up
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, way in ways.items():
            seconds[name].append(timed(way))
    baseline = statistics.median(cpu for _, cpu in seconds["2 padding-free, TRL head"])
    for name, measured in seconds.items():
        wall, cpu = statistics.median(w for w, _ in measured), statistics.median(c for _, c in measured)
        print(f"  {name:60s} wall {wall:6.1f} s  cpu {cpu:6.1f} s  {sum(LENGTHS) / wall:6.1f} tokens/s  "
              f"{baseline / cpu:.2f}x way 2 (cpu)")

    togi_path = ways["4 padding-free, labelled-only head, per-example attention"]
    print("threads, way 4 (and the cores other processes kept busy meanwhile):")
    for threads in (1, default_threads) * args.rounds:
        torch.set_num_threads(threads)
        usage = CpuUsage()
        wall, cpu = timed(togi_path)
        print(f"  {threads} thread(s): wall {wall:6.1f} s, {sum(LENGTHS) / wall:6.1f} tokens/s; "
              f"others kept {usage.others_since_last():.1f} cores busy")


if __name__ == "__main__":
    main()
