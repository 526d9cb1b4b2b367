"""togi (研ぎ): sharpen a pretrained language model for one task on your own data.

    import togi
    config = togi.load_config("examples/recipes/reviews-lora.yaml")
    result = togi.train(config)          # -> togi.RunResult; the config's task and stage choose the recipe
    run = togi.Run.open(result.run_dir)  # the run directory: its config, run.json, metrics, trained model
    study = togi.tune("recipe.yaml", "space.yaml", trials=6)  # -> TuneResult: .trials, .best, .best_recipe, .plot

``togi.train`` is the function. The training package of the same name is imported here, before the function
is bound, so that importing its modules later (``from togi.train.sft import ...``) does not rebind the name:
Python sets a package's attribute only when it first imports the subpackage. (So import its modules with
``from togi.train... import``; ``import togi.train.sft as sft`` looks ``sft`` up on the function and fails.)
"""

from __future__ import annotations

from typing import Any

from togi.train import RunResult, TrainingFailed, train  # imports no training library: the recipes load when they run
from togi.version import __version__

__all__ = ["Run", "RunResult", "TrainingFailed", "__version__", "load_config", "train", "tune"]


def tune(recipe: Any, space: Any, *, trials: int | None = None, overrides: list[str] = (), **options: Any) -> Any:
    """``togi tune`` from Python: a hyper-parameter search over ``recipe`` (a YAML path) in ``space`` (a search-space
    YAML path); ``options`` as the command's (study_dir, storage, study_name, objective, sampler, pruner, seed, log,
    console). Returns a ``togi.train.tune.TuneResult``: the trials, the best one, the best recipe's path, the plot."""
    from togi.train.search_space import load_search_space
    from togi.train.tune import Tuner

    return Tuner(recipe, load_search_space(space, recipe, list(overrides)), trials=trials, overrides=list(overrides), **options).run()


def __getattr__(name: str) -> Any:
    # pydantic and numpy only when the API is used, so that `import togi` and `togi --help` stay fast.
    if name == "load_config":
        from togi.config import load_config

        return load_config
    if name == "Run":
        from togi.runs import Run

        return Run
    raise AttributeError(f"module 'togi' has no attribute {name!r}")
