"""`togi estimate` against the measured peak: each case trains a few steps with `togi train` in its own process on
examples that all fill data.max_length (so the estimate's worst case is the real one), and its peak is read from the
run's metrics (peak RSS on a CPU, torch's allocator peak on a GPU).

    .venv/bin/python benchmarks/memory_estimate.py                   # this CPU: the tiny model and SmolLM2-135M, ~6 min
    .venv/bin/python benchmarks/memory_estimate.py --device cuda     # a GPU: the 1B and 8B shapes with random weights

Prints a Markdown table (predicted, measured, error) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

LONG_ANSWER = "この商品は音質が良く、装着感も快適です。バッテリーは一日中持ち、接続も安定しています。" * 40

CPU_CASES = [  # name, model, method, batch, max_length, more overrides
    ("tiny, lora", "tiny", "lora", 4, 512, []),
    ("SmolLM2-135M, lora, batch 4 x 512", "smollm2-135m-instruct", "lora", 4, 512, []),
    ("SmolLM2-135M, lora, batch 8 x 1024, one pass", "smollm2-135m-instruct", "lora", 8, 1024, ["training.micro_batch_tokens=null"]),
    ("SmolLM2-135M, full, batch 2 x 512", "smollm2-135m-instruct", "full", 2, 512, []),
    ("SmolLM2-135M, full, batch 4 x 1024, one pass", "smollm2-135m-instruct", "full", 4, 1024, ["training.micro_batch_tokens=null"]),
]
GPU_CASES = [
    ("Llama-3.2-1B shape, lora, 4 x 2048", "examples/shapes/llama-3.2-1b", "lora", 4, 2048, []),
    ("Llama-3.2-1B shape, full, 2 x 2048", "examples/shapes/llama-3.2-1b", "full", 2, 2048, []),
    ("Llama-3.1-8B shape, lora, 2 x 4096", "examples/shapes/llama-3.1-8b", "lora", 2, 4096, []),
    ("Llama-3.1-8B shape, qlora, 2 x 4096", "examples/shapes/llama-3.1-8b", "qlora", 2, 4096, []),
]


def tiny_model(directory: Path) -> str:
    from conftest import build_tiny_model, build_tokenizer

    tokenizer = build_tokenizer()
    model = build_tiny_model(tokenizer)
    model.config.max_position_embeddings = 2048
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def random_model(shape_dir: str, directory: Path) -> str:
    """A model of a shape's config.json with random bf16 weights, and the tiny tokenizer (its ids are a subset)."""
    import torch
    from conftest import build_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape_dir), dtype=torch.bfloat16)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    from togi.config import load_config
    from togi.train.memory_plan import GB, estimate, model_shape, recipe_setup

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        data = work / "train.jsonl"
        data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"レビュー{i}を要約してください。"},
                                                         {"role": "assistant", "content": LONG_ANSWER}]}, ensure_ascii=False) + "\n"
                                for i in range(64)), encoding="utf-8")
        tiny = tiny_model(work / "tiny") if args.device == "cpu" else None
        for number, (name, model, method, batch, length, more) in enumerate(CPU_CASES if args.device == "cpu" else GPU_CASES):
            if args.device == "cuda":
                model = random_model(model, work / f"model{number}")
            overrides = [f"model={tiny if model == 'tiny' else model}", f"method={method}", f"data.train_file={data}",
                         f"output_dir={work / f'run{number}'}", f"training.max_steps={args.steps}", f"training.batch_size={batch}",
                         "training.gradient_accumulation=1", f"data.max_length={length}", "data.val_ratio=0", "monitoring.samples=0",
                         "monitoring.log_every=1", "training.precision=fp32" if args.device == "cpu" else "training.precision=bf16", *more]
            config = load_config(None, overrides)
            predicted = estimate(model_shape(config), recipe_setup(config, args.device, 1)).total
            command = [sys.executable, "-m", "togi", "train", *[part for value in overrides for part in ("--set", value)]]
            subprocess.run(command, check=True, capture_output=True)
            records = [json.loads(line) for line in (work / f"run{number}" / "metrics.jsonl").read_text().splitlines()]
            measured = max(record["peak_memory_mb"] for record in records) * 2**20
            rows.append((name, predicted / GB, measured / GB))
            print(f"{name}: predicted {predicted / GB:.2f} GB, measured {measured / GB:.2f} GB", file=sys.stderr, flush=True)
    print("| case | predicted GB | measured GB | error |\n|---|---|---|---|")
    for name, predicted, measured in rows:
        print(f"| {name} | {predicted:.2f} | {measured:.2f} | {100 * (predicted - measured) / measured:+.0f}% |")


if __name__ == "__main__":
    main()
