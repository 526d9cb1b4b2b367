"""``togi tune``: a hyper-parameter search over a recipe (Optuna; see ``togi.train.tune``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import make_console
from togi.train.search_space import OBJECTIVES, PRUNERS, SAMPLERS, load_search_space
from togi.train.tune import TuneResult, Tuner

console = make_console()


def tune_command(
    recipe: Annotated[Path, typer.Argument(metavar="RECIPE", help="The recipe YAML to search around.", show_default=False)],
    space: Annotated[Path, typer.Option("--space", help="The search space YAML (see examples/search/).", show_default=False)],
    trials: Annotated[Optional[int], typer.Option(min=1, help="Trials in the study, all processes together (default: the "
                                                  "space's num_trials, or the grid's size, or 20).")] = None,
    objective: Annotated[Optional[str], typer.Option(help=f"{', '.join(OBJECTIVES)} (default: the space's, else the recipe's "
                                                     "monitoring.eval_metric, else eval_loss).")] = None,
    sampler: Annotated[Optional[str], typer.Option(help=f"{', '.join(SAMPLERS)} (default: the space's search_strategy.type).")] = None,
    pruner: Annotated[Optional[str], typer.Option(help=f"{', '.join(PRUNERS)}: stop trials that trail the others at an "
                                                  "evaluation (default median).")] = None,
    study_dir: Annotated[Optional[Path], typer.Option(help="Where the trials' run directories, the table, the best recipe and "
                                                      "the plot go (default runs/tune-<recipe name>).")] = None,
    storage: Annotated[Optional[str], typer.Option(help="An SQLAlchemy URL for the study, shared by every process that names it "
                                                   "(default: sqlite:///STUDY_DIR/study.db).")] = None,
    study_name: Annotated[Optional[str], typer.Option(help="The study's name in the storage (default: the recipe's file name).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the sampler, for a search that repeats (give each process "
                                                "sharing a study its own).")] = None,
    set_values: Annotated[Optional[list[str]], typer.Option("--set", help="Override a recipe field in every trial: --set "
                                                            "training.max_steps=16 (repeatable).")] = None,
) -> None:
    """Search hyper-parameters: train the recipe once per trial with values from the search space, keep the best.

    Run it again to continue a study (finished trials are kept; an interrupted one is run again), or from several
    machines with one --storage. Examples: `togi tune examples/recipes/reviews-lora.yaml --space
    examples/search/reviews-space.yaml --trials 6` · `togi tune RECIPE --space SPACE --storage postgresql://host/db`
    """
    for name, value, known in (("--sampler", sampler, SAMPLERS), ("--pruner", pruner, PRUNERS), ("--objective", objective, OBJECTIVES)):
        if value is not None and value not in known:
            raise fail(f"{name} {value}: not one togi knows", f"use one of {', '.join(known)}")
    overrides = list(set_values or [])
    search_space = load_search_space(space, recipe, overrides)
    tuner = Tuner(recipe, search_space, trials=trials, study_dir=study_dir, storage=storage, study_name=study_name, objective=objective,
                  sampler=sampler, pruner=pruner, seed=seed, overrides=overrides, console=console,
                  log=lambda message: console.print(Text(message), soft_wrap=True))
    quiet_libraries()
    console.print(Text(f"study {tuner.study_name}: {tuner.trials} trials, {tuner.direction} {tuner.objective}, sampler "
                       f"{tuner.sampler_name}, pruner {tuner.pruner_name}; storage {tuner.storage_url}", style="bold"), soft_wrap=True)
    report(tuner.run())


def report(result: TuneResult) -> None:
    keys = list(dict.fromkeys(key for row in result.trials for key in row.params))
    table = Table(title=f"study {result.study_name}: {len(result.trials)} trials", title_justify="left")
    for column in ("trial", "state", result.objective, *keys, "time", "note"):
        table.add_column(column, justify="left" if column in ("state", "note") else "right")
    for row in result.trials:
        style = "bold green" if result.best and row.number == result.best.number else ("dim" if row.state in ("pruned", "failed") else "")
        table.add_row(str(row.number), row.state, "—" if row.value is None else f"{row.value:.4f}",
                      *(_value(row.params.get(key)) for key in keys), "—" if row.seconds is None else f"{row.seconds:.0f} s", row.note,
                      style=style)
    console.print(table)
    if result.best is None:
        console.print(Text("no trial finished yet: run the same command again to continue the study", style="bold red"))
        return
    console.print(Text(f"✓ best: trial {result.best.number}, {result.objective} {result.best.value:.4f}", style="bold green"))
    console.print(Text(f"best recipe: {result.best_recipe}   (togi train {result.best_recipe})\ntrials: {result.table}   plot: {result.plot}"),
                  soft_wrap=True)


def _value(value: object) -> str:
    return "—" if value is None else (f"{value:.3g}" if isinstance(value, float) else str(value))
