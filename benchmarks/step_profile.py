"""Where a short-row training step's time goes: torch.profiler over a few LoRA steps, by operator.

    .venv/bin/python benchmarks/step_profile.py                      # PEFT's LoRA layers, then togi's
    .venv/bin/python benchmarks/step_profile.py --lengths 40x8 --dtype bf16

One padding-free row of short examples (default: 8 of 40 tokens, the last 10 of each labelled, as the
calculator chats of ``train_throughput.py``'s short shape), SmolLM2-135M-Instruct with LoRA r=16, alpha 32,
dropout 0.05 on every linear layer of the blocks, the LM head at labelled positions only and attention inside
each example (togi's CPU path), AdamW. After two warm-up steps, the median of five timed steps, then the
operators of three profiled steps sorted by their own CPU time. Run twice: with PEFT's LoRA layers (how togi
trained before issue 21) and with togi's CPU LoRA layer (``togi/train/cpu_lora.py``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def build_step(lengths: list[int], labelled: int, cpu_lora: bool, dtype: str):
    import peft
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from togi.models.embedded import ensure_embedded_model
    from togi.train.cpu_lora import use_cpu_lora_layers
    from togi.train.loss import compact_lm_loss

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ensure_embedded_model(), dtype=torch.float32, attn_implementation="sdpa")
    lora = peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, use_cpu_lora_layers(lora) if cpu_lora else lora)
    model.train()
    examples = []
    for length in lengths:
        ids = torch.randint(100, 40000, (length,)).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (length - labelled) + ids[length - labelled:]})
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = compact_lm_loss(model, batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="40x8", help="LENGTHxCOUNT: the examples of the row")
    parser.add_argument("--labelled", type=int, default=10, help="labelled tokens at the end of each example")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast, as togi on a CPU with native bf16")
    parser.add_argument("--rows", type=int, default=25, help="operators to list")
    args = parser.parse_args()
    length, count = (int(part) for part in args.lengths.split("x"))
    lengths = [length] * count

    from torch.profiler import ProfilerActivity, profile

    from togi.train.attention import per_example_attention

    for name, cpu_lora in (("PEFT's LoRA layers", False), ("togi's CPU LoRA layer", True)):
        model, step = build_step(lengths, args.labelled, cpu_lora, args.dtype)
        with per_example_attention(model):
            for _ in range(2):
                step()
            seconds = []
            for _ in range(5):
                started = time.perf_counter()
                step()
                seconds.append(time.perf_counter() - started)
            with profile(activities=[ProfilerActivity.CPU]) as profiler:
                for _ in range(3):
                    step()
        median = statistics.median(seconds)
        print(f"\n## {name}: {sum(lengths)} tokens ({count} x {length}), {args.dtype}: step {median * 1000:.0f} ms, "
              f"{sum(lengths) / median:.0f} tokens/s (steps: {', '.join(f'{s * 1000:.0f}' for s in seconds)} ms)")
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50))


if __name__ == "__main__":
    main()
