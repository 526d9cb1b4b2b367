"""``togi train``: fine-tune from a recipe, flags or both; ``--resume RUN_DIR`` continues a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import make_console
from togi.config import TrainConfig, load_config
from togi.runs import Run
from togi.train import RunResult, train

console = make_console()


def train_command(
    recipe: Annotated[Optional[Path], typer.Argument(metavar="RECIPE", help="Recipe YAML (see examples/recipes/).", show_default=False)] = None,
    data: Annotated[Optional[Path], typer.Option(help="Training data file (sets data.train_file).")] = None,
    val_file: Annotated[Optional[Path], typer.Option(help="Validation data file (sets data.val_file).")] = None,
    val_ratio: Annotated[Optional[float], typer.Option(help="Hold out this share of the training data for validation.")] = None,
    task: Annotated[Optional[str], typer.Option(help="chat (default) or classification: a text classifier with a new head.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Base model: the embedded default's name, a directory, a .gguf file or a hub id.")] = None,
    method: Annotated[Optional[str], typer.Option(help="full, freeze, lora, dora, qlora, prompt_tuning or prefix_tuning.")] = None,
    stage: Annotated[Optional[str], typer.Option(help="sft (default), or a preference stage: dpo, orpo, kto, reward, rlhf.")] = None,
    output_dir: Annotated[Optional[Path], typer.Option(help="Run directory (default: runs/<date>-<method>).")] = None,
    epochs: Annotated[Optional[float], typer.Option(help="Training epochs.")] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimizer steps.")] = None,
    precision: Annotated[Optional[str], typer.Option(help="auto, fp32, bf16 or fp16 (auto picks per device).")] = None,
    train_on_prompt: Annotated[bool, typer.Option("--train-on-prompt", help="Take the loss on every token, not only the answers.")] = False,
    auto_batch: Annotated[bool, typer.Option("--auto-batch", help="Halve the batch on a GPU out-of-memory error and retry.")] = False,
    base_of: Annotated[Optional[Path], typer.Option(help="Train on the base model of this adapter run: another task's adapter for "
                                                    "the same base (togi export A=RUN B=RUN --to multi-adapter serves them together).")] = None,
    set_values: Annotated[Optional[list[str]], typer.Option("--set", help="Override any recipe field: --set lora.r=32 (repeatable).")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="Continue the run in this directory from its last checkpoint.")] = None,
    nproc_per_node: Annotated[Optional[int], typer.Option("--nproc-per-node", help="Train on this many processes on this node "
                                                           "(one per GPU; distributed.strategy says how they share the work).",
                                                           rich_help_panel="Several processes")] = None,
    nnodes: Annotated[int, typer.Option(help="Nodes in the run; run the same command on each.", rich_help_panel="Several processes")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's number, 0 to nnodes-1.", rich_help_panel="Several processes")] = 0,
    master_addr: Annotated[Optional[str], typer.Option(help="Node 0's address, where the nodes meet.", rich_help_panel="Several processes")] = None,
    master_port: Annotated[int, typer.Option(help="Node 0's port for the meeting.", rich_help_panel="Several processes")] = 29500,
) -> None:
    """Fine-tune a model on your data. Validates the recipe and the data before any model loads.

    Examples: `togi train --data train.jsonl` · `togi train examples/recipes/reviews-lora.yaml --set lora.r=32` ·
    `togi train --resume runs/NAME` · `togi train examples/recipes/reviews-classification.yaml` ·
    `togi train faq.yaml --base-of runs/reviews` (a second task's adapter on the same base) ·
    `togi train recipe.yaml --nproc-per-node 8` (8 processes; also runs under torchrun or accelerate launch)
    """
    overrides = list(set_values or [])
    flags = {"data.train_file": data, "data.val_file": val_file, "data.val_ratio": val_ratio, "task": task, "model": model, "method": method, "stage": stage,
             "output_dir": output_dir, "training.epochs": epochs, "training.max_steps": max_steps, "training.precision": precision}
    overrides += [f"{key}={value}" for key, value in flags.items() if value is not None]
    if base_of is not None:
        if model is not None:
            raise fail("--base-of and --model both name the base model", "keep one of them")
        overrides.append(f"model={_base_of(base_of)}")
    if train_on_prompt:
        overrides.append("data.train_on_prompt=true")
    if auto_batch:
        overrides.append("training.auto_batch=true")
    if resume is not None:
        if recipe is not None or overrides:
            raise fail("--resume continues a run exactly as it was configured",
                       f"drop the other arguments; the recipe is {Run(resume).config_path}")
        config = Run.open(resume).config
    else:
        config = load_config(recipe, overrides)
    if nproc_per_node is not None or nnodes > 1:
        from togi.train.launch import Launch, launch_training

        launch_training(Launch(nproc_per_node or 1, nnodes, node_rank, master_addr, master_port), config, resume_dir=resume)
        return
    _run(config, resume)


def _base_of(run_dir: Path) -> str:
    """The base model an adapter run trained on, as its recipe named it."""
    run = Run.open(run_dir)
    if not run.config.traits.adapter:
        raise fail(f"--base-of {run_dir}: a {run.config.method} run changed its base's own weights, so it has no base to share",
                   "give a run of method lora, dora or qlora, or --model for the base itself")
    return run.config.model


def _run(config: TrainConfig, resume: Path | None) -> None:
    from togi.train.distributed import Processes

    quiet_libraries()
    result = train(config, resume_dir=resume, console=console, log=lambda message: console.print(message, soft_wrap=True))
    if not Processes.current().main:
        return  # the main process reports the run
    if config.task == "classification":
        _report_classifier(result)
    elif config.stage != "sft":
        console.print(Text(f"✓ stage {config.stage} finished: {result.steps} steps", style="bold green"))
        console.print(f"run directory: {result.run_dir}   metrics: {Run(result.run_dir).stage_metrics_path}", soft_wrap=True, highlight=False)
    else:
        _report_chat_model(result)


def _report_classifier(result: RunResult) -> None:
    accuracy, baseline, macro_f1 = (result.scores.get(name) for name in ("accuracy", "majority_baseline", "macro_f1"))
    scores = (f", validation accuracy {accuracy:.3f} (majority-class baseline {baseline:.3f}), macro-F1 {macro_f1:.3f}"
              if accuracy is not None else ", no validation split")
    console.print(Text(f"✓ classifier trained: {result.steps} steps in {result.seconds:.0f} s{scores}", style="bold green"), soft_wrap=True)
    console.print(f"run directory: {result.run_dir}   result: {result.output_dir}   try: togi predict {result.run_dir} \"some text\"",
                  soft_wrap=True, highlight=False)


def _report_chat_model(result: RunResult) -> None:
    from togi.train.samples import render_samples

    if result.samples:
        render_samples(console, result.samples)
    console.print(Text(f"✓ {result.status}: {result.steps} steps, final train loss {result.train_loss:.4f}"
                       + (f", eval loss {result.eval_loss:.4f}" if result.eval_loss is not None else "")
                       + (f", {result.tokens_per_second:.0f} tokens/s" if result.tokens_per_second else ""), style="bold green"))
    console.print(f"run directory: {result.run_dir}   result: {result.output_dir}   loss curve: {Run(result.run_dir).plot_path}",
                  soft_wrap=True, highlight=False)
