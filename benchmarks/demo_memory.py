"""Peak memory of the demo's training, phase by phase: how much RAM `make demo` needs, and where.

    .venv/bin/python benchmarks/demo_memory.py                 # togi now, and as it trained before (two processes)
    .venv/bin/python benchmarks/demo_memory.py --variants now --set training.max_steps=4

Trains `examples/recipes/reviews-lora.yaml` (the demo's job: SmolLM2-135M-Instruct, LoRA r=16 on every linear
layer, batches of 6 reviews, 32 steps, two evaluations that generate answers for 24 validation reviews, 3
samples) on the demo's split of `examples/reviews/reviews.jsonl`, made here with `togi data split` as `make demo`
makes it. Each variant runs in its own process:

  now      togi as it is
  before   without togi's CPU LoRA layer (PEFT's own LoRA layers) and with training.micro_batch_tokens=null (each
           batch in one pass): how togi trained before issue 21

Linux keeps a process's peak resident memory in VmHWM and resets it when "5" is written to
/proc/self/clear_refs. The child reads and resets it at each phase boundary, so each figure is the exact peak of
that phase (including memory the allocator keeps), not a sample:

  read data    the recipe, the tokenizer, reading and splitting the data
  tokenize     tokenizing the training and validation examples
  load model   the model's weights and the LoRA layers, the trainer
  steps        each optimizer step (the largest of them is shown, with its number)
  evaluation   eval loss and the accuracy of generated answers, and the checkpoint save after it
  sampling     the sample answers generated after training
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "examples" / "recipes" / "reviews-lora.yaml"
DATA = REPO / "examples" / "reviews" / "reviews.jsonl"
LABELS = r"ラベル: (\S+)"
PHASES = ("read data", "tokenize", "load model", "steps", "evaluation", "sampling")


class PhasePeaks:
    """Peak RSS per phase from VmHWM, reset at every boundary."""

    def __init__(self) -> None:
        self.phase, self.started = "read data", time.perf_counter()
        self.peaks: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.largest_step = 0
        self._reset()

    @staticmethod
    def _reset() -> None:
        Path("/proc/self/clear_refs").write_text("5")

    @staticmethod
    def _high_water_mb() -> float:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

    def enter(self, phase: str, step: int = 0) -> None:
        peak = self._high_water_mb()
        if self.phase == "steps" and peak > self.peaks.get("steps", 0):
            self.largest_step = step
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), peak)
        now = time.perf_counter()
        self.seconds[self.phase] = self.seconds.get(self.phase, 0.0) + now - self.started
        self.phase, self.started = phase, now
        self._reset()


def child(variant: str, data_dir: Path, overrides: list[str], result: Path) -> None:
    from importlib import import_module

    from transformers import TrainerCallback

    from togi.config import load_config
    from togi.train import train

    sft = import_module("togi.train.sft")  # the package's name `togi.train` is also its function train

    peaks = PhasePeaks()

    def marked(function, phase):
        def wrapper(*args, **kwargs):
            peaks.enter(phase)
            return function(*args, **kwargs)
        return wrapper

    # togi's own functions, wrapped here to mark where each phase starts.
    sft.tokenize_examples = marked(sft.tokenize_examples, "tokenize")
    sft.load_causal_lm = marked(sft.load_causal_lm, "load model")
    sft.sample_generations = marked(sft.sample_generations, "sampling")
    if variant in ("no-sharing", "one-pass"):
        if variant == "no-sharing":
            sft.share_common_prefix = lambda batch: batch
        else:
            overrides = [*overrides, "training.micro_batch_tokens=null"]
    if variant == "before":
        import_module("togi.train.cpu_lora").use_cpu_lora_layers = lambda peft_config: peft_config
        overrides = [*overrides, "training.micro_batch_tokens=null"]

    class Phases(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            peaks.enter("steps", state.global_step + 1)

        def on_step_end(self, args, state, control, **kwargs):
            peaks.enter("evaluation", state.global_step)  # until the next step: evaluation and saving, when due

    config = load_config(RECIPE, [f"data.train_file={data_dir / 'reviews.train.jsonl'}", f"data.val_file={data_dir / 'reviews.val.jsonl'}",
                                  f"output_dir={data_dir / variant}", *overrides])
    started = time.perf_counter()
    outcome = train(config, log=lambda message: None, callbacks=[Phases()])
    peaks.enter("done")
    metrics = [json.loads(line) for line in (outcome.run_dir / "metrics.jsonl").read_text().splitlines()]
    accuracy = [record["eval_accuracy"] for record in metrics if "eval_accuracy" in record]
    result.write_text(json.dumps({"peaks": peaks.peaks, "seconds": peaks.seconds, "largest_step": peaks.largest_step,
                                  "total_seconds": time.perf_counter() - started, "eval_accuracy": accuracy}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="now,before")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a recipe override for every variant")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, Path(args.data_dir), args.set, Path(args.result))

    with tempfile.TemporaryDirectory(prefix="togi-demo-memory-") as work:
        work_dir = Path(work)
        togi = Path(sys.executable).parent / "togi"
        subprocess.run([str(togi), "data", "split", str(DATA), "--val-ratio", "0.1", "--test-ratio", "0.1", "--stratify", "label",
                        "--label-pattern", LABELS, "--out-dir", str(work_dir)], check=True, capture_output=True)
        print(f"recipe: {RECIPE.relative_to(REPO)} {' '.join(args.set)}; data: the demo's split of {DATA.relative_to(REPO)}")
        results = {}
        for variant in args.variants.split(","):
            result = work_dir / f"{variant}.json"
            subprocess.run([sys.executable, __file__, "--child", variant, "--data-dir", str(work_dir), "--result", str(result),
                            *[f"--set={override}" for override in args.set]], check=True, cwd=REPO)
            results[variant] = json.loads(result.read_text())
            print(f"  {variant}: {results[variant]['total_seconds']:.0f} s", flush=True)

    names = list(results)
    print("\n| phase | " + " | ".join(f"{name}: peak RSS (GiB) | {name}: seconds" for name in names) + " |")
    print("|---|" + "---|---|" * len(names))
    for phase in PHASES:
        cells = []
        for name in names:
            peak = results[name]["peaks"].get(phase)
            cells += [f"{peak / 1024:.2f}" if peak else "-", f"{results[name]['seconds'].get(phase, 0):.0f}"]
        label = f"{phase} (largest: step {', '.join(str(results[name]['largest_step']) for name in names)})" if phase == "steps" else phase
        print(f"| {label} | " + " | ".join(cells) + " |")
    for name in names:
        whole = max(results[name]["peaks"].values()) / 1024
        print(f"{name}: peak {whole:.2f} GiB over the run, {results[name]['total_seconds']:.0f} s, "
              f"eval accuracy at each evaluation {results[name]['eval_accuracy']}")


if __name__ == "__main__":
    main()
