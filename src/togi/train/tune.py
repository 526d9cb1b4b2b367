"""``togi tune``: a hyper-parameter search over a recipe, on Optuna.

Each trial is an ordinary ``togi train`` run of the recipe with the trial's values set (``STUDY_DIR/trial-007``),
scored by one objective: the eval loss, or a task score that ``monitoring.eval_metric`` computes at each
evaluation from generated answers (accuracy, macro-F1, exact match, ROUGE-L). The value of a trial is the
objective of the model the run keeps: the best checkpoint's where the run keeps the best one (a task metric, or
early stopping), else the last evaluation's. Every evaluation is reported to Optuna as it happens, so its pruner
(median or Hyperband) can stop a trial that is going nowhere; a pruned trial's run stops there and keeps what it
saved.

The study lives in Optuna's storage: ``STUDY_DIR/study.db`` (SQLite) by default, or any SQLAlchemy URL
(``postgresql://...``), so that several ``togi tune`` processes, on one machine or several, share one study:
Optuna gives each trial its own number, and each process stops once the study holds ``trials`` trials that
finished or are running. A killed process leaves its trial running in the storage. The next ``togi tune`` on the
same machine finds that the process is gone, marks the trial failed and queues its values again; a trial left by
another machine is failed and queued by Optuna's heartbeat once it has been silent for ``HEARTBEAT_GRACE`` seconds.

At the end: the trials as a table (``trials.csv``), the best recipe (``best-recipe.yaml``, which ``togi train``
takes as it is) and a plot of the objective over the trials beside each parameter's importance (``study.png``).
"""

from __future__ import annotations

import csv
import io
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from togi.config import TrainConfig, load_config
from togi.data.writer import atomic_write_text
from togi.errors import TogiError
from togi.runs import Run
from togi.train.search_space import OBJECTIVES, SearchSpace, assignment

HEARTBEAT_INTERVAL, HEARTBEAT_GRACE = 60, 300  # seconds
FAILURES_IN_A_ROW = 3  # a process stops after this many failed trials in a row: the cause is likely not the values
TRIAL_STATES = ("COMPLETE", "PRUNED", "RUNNING")  # the trials that count towards the study's number of trials


class TuneFailed(TogiError):
    work_failed = True


@dataclass
class TrialRow:
    number: int
    state: str  # complete, pruned, failed, running, waiting
    value: float | None
    params: dict[str, Any]
    seconds: float | None
    run_dir: str | None
    note: str = ""  # why it was pruned or failed; which trial it retries


@dataclass
class TuneResult:
    study_dir: Path
    study_name: str
    storage: str
    objective: str
    direction: str
    trials: list[TrialRow]
    best: TrialRow | None
    best_recipe: Path | None
    plot: Path | None
    table: Path
    ran_here: list[int] = field(default_factory=list)  # the trials this process ran


def default_objective(config: TrainConfig) -> str:
    """The recipe's own task metric where it watches one, else the eval loss."""
    return config.monitoring.eval_metric if config.monitoring.watches_the_task else "eval_loss"


def metric_key(objective: str) -> str:
    return objective if objective == "eval_loss" else f"eval_{objective}"


def kept_value(records: list[dict[str, Any]], objective: str, config: TrainConfig) -> float | None:
    """The objective of the model a run keeps: at the best evaluation by the recipe's own metric when the run keeps
    its best checkpoint (a task metric, or early stopping), else at the last evaluation."""
    evaluations = [record for record in records if metric_key(objective) in record]
    if not evaluations:
        return None
    monitoring = config.monitoring
    if monitoring.watches_the_task or monitoring.early_stopping_patience:
        judged_by = metric_key(default_objective(config))
        judged = [record for record in evaluations if judged_by in record]
        if judged:  # the first of the best, as transformers keeps it
            if monitoring.watches_the_task:
                kept = max(judged, key=lambda record: (record[judged_by], -record["step"]))
            else:
                kept = min(judged, key=lambda record: (record[judged_by], record["step"]))
            return kept[metric_key(objective)]
    return evaluations[-1][metric_key(objective)]


def _reporter(trial: Any, objective: str) -> Any:
    """A transformers callback that reports each evaluation's objective to the trial and stops the run when the
    pruner says so."""
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        pruned_at: int | None = None

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
            value = (metrics or {}).get(metric_key(objective))
            if value is None:
                return
            trial.report(float(value), state.global_step)
            if trial.should_prune():
                self.pruned_at = state.global_step
                control.should_training_stop = True

    return ReportToTrial()


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


class Tuner:
    """One process's part in a study: ``run()`` runs trials until the study holds ``trials`` of them."""

    def __init__(self, recipe: Path | str, space: SearchSpace, *, trials: int | None = None, study_dir: Path | str | None = None,
                 storage: str | None = None, study_name: str | None = None, objective: str | None = None, sampler: str | None = None,
                 pruner: str | None = None, seed: int | None = None, overrides: list[str] = (), log: Callable[[str], None] = print,
                 console: Any = None) -> None:
        self.recipe, self.space, self.overrides = Path(recipe), space, list(overrides)
        self.base = load_config(recipe, self.overrides)
        self.objective = objective or space.objective or default_objective(self.base)
        if self.objective not in OBJECTIVES:
            raise TogiError(f"--objective {self.objective}: not an objective togi knows", f"use one of {', '.join(OBJECTIVES)}")
        self.sampler_name = sampler or space.sampler
        self.trials = trials or space.trials or (space.grid_size if self.sampler_name == "grid" else 20)
        if self.sampler_name == "grid":
            self.trials = min(self.trials, space.grid_size)
        self.study_dir = Path(study_dir or Path("runs") / f"tune-{self.recipe.stem}")
        self.study_name = study_name or self.recipe.stem
        self.storage_url = storage or f"sqlite:///{(self.study_dir / 'study.db').resolve()}"
        self.seed, self.log, self.console = seed, log, console
        self.direction = "minimize" if self.objective == "eval_loss" else "maximize"
        self.trial_overrides = [*self.overrides] + ([f"monitoring.eval_metric={self.objective}"] if self.objective != "eval_loss" else [])
        self.trial_config = load_config(recipe, self.trial_overrides)  # names a missing label_pattern before any trial
        has_val = self.trial_config.data.val_file or self.trial_config.data.val_ratio
        if not has_val:
            raise TogiError(f"{self.recipe}: the objective {self.objective} is measured on validation data, and the recipe has none",
                            "set data.val_file, or data.val_ratio (e.g. --set data.val_ratio=0.1)")
        self.pruner_name = pruner or space.pruner or "median"
        self.ran_here: list[int] = []

    # ---------- the study ----------
    def open_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # togi prints each trial itself
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.storage = self._storage()
        study = optuna.create_study(storage=self.storage, study_name=self.study_name, direction=self.direction,
                                    sampler=self._sampler(), pruner=self._pruner(), load_if_exists=True)
        recorded = study.user_attrs.get("objective")
        if recorded and recorded != self.objective:
            raise TogiError(f"the study {self.study_name} in {self.storage_url} scores {recorded}, not {self.objective}",
                            f"use --objective {recorded}, or another --study-name")
        if study.direction.name.lower() != self.direction:
            raise TogiError(f"the study {self.study_name} in {self.storage_url} was made to {study.direction.name.lower()}",
                            "use another --study-name")
        if not recorded:
            study.set_user_attr("objective", self.objective)
            study.set_user_attr("recipe", str(self.recipe))
            study.set_user_attr("space", str(self.space.path))
        self.requeue_interrupted(study)
        return study

    def _storage(self) -> Any:
        """Optuna's storage, with the heartbeat that fails and requeues a trial whose process went silent. Two
        processes opening a new SQLite file at once race to create its tables; the loser finds them made and retries."""
        import optuna
        from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError

        engine = {"connect_args": {"timeout": 60}} if self.storage_url.startswith("sqlite") else None  # wait out another process's write
        hint = ("an SQLAlchemy URL whose driver is installed and whose database answers, e.g. sqlite:///study.db, or "
                "postgresql://user:password@host/db with psycopg2 installed")
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat: stable since Optuna 2.8
                    return optuna.storages.RDBStorage(
                        self.storage_url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE,
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3))
            except (IntegrityError, OperationalError) as error:
                if attempt == 2:
                    raise TogiError(f"--storage {self.storage_url}: {str(error.orig or error).splitlines()[0]}", hint) from None
                time.sleep(1 + attempt)
            except (ImportError, ValueError, ArgumentError) as error:
                raise TogiError(f"--storage {self.storage_url}: {error}", hint) from None
        raise AssertionError("unreachable")

    def _sampler(self) -> Any:
        import optuna

        if self.sampler_name == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        if self.sampler_name == "grid":
            return optuna.samplers.GridSampler(self.space.grid(), seed=self.seed)
        # TPE learns from the trials before it; with a budget of a few trials it starts after a third of them
        return optuna.samplers.TPESampler(seed=self.seed, n_startup_trials=max(2, min(10, self.trials // 3)))

    def _pruner(self) -> Any:
        import optuna

        if self.pruner_name == "none":
            return optuna.pruners.NopPruner()
        if self.pruner_name == "hyperband":
            max_steps = self.trial_config.training.max_steps
            return optuna.pruners.HyperbandPruner(min_resource=self.trial_config.monitoring.eval_every, max_resource=max_steps or "auto")
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)

    def requeue_interrupted(self, study: Any) -> list[int]:
        """Trials left running by a process of this machine that is gone: failed, and their values queued again."""
        from optuna.trial import TrialState

        host, requeued = socket.gethostname(), []
        study_id = self.storage.get_study_id_from_name(self.study_name)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.user_attrs.get("host") != host or _pid_alive(trial.user_attrs.get("pid")):
                continue
            trial_id = self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            self.storage.set_trial_user_attr(trial_id, "error", "interrupted: its togi tune process ended while it ran")
            if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):  # False: another process failed it first
                study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
                requeued.append(trial.number)
                self.log(f"trial {trial.number} was interrupted (its process {trial.user_attrs.get('pid')} is gone): "
                         "marked failed, its values queued again")
        return requeued

    # ---------- the trials ----------
    def run(self) -> TuneResult:
        from optuna.trial import TrialState

        study = self.open_study()
        failures = 0
        while True:
            counted = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name in TRIAL_STATES]
            if len(counted) >= self.trials:
                break
            finished: list[Any] = []
            study.optimize(self._objective, n_trials=1, catch=(Exception,), callbacks=[lambda _, trial: finished.append(trial)])
            if not finished:  # the sampler ended the study (a grid run through)
                break
            failures = failures + 1 if finished[0].state == TrialState.FAIL else 0
            if failures >= FAILURES_IN_A_ROW:
                raise TuneFailed(f"{failures} trials in a row failed; the last: {finished[0].user_attrs.get('error', 'no message')}",
                                 f"fix that, then run the same togi tune again: the study in {self.storage_url} keeps its trials")
        return self.summarize(study)

    def _objective(self, trial: Any) -> float:
        import optuna

        from togi.train import train

        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        values = {parameter.key: parameter.suggest(trial) for parameter in self.space.parameters}
        run_dir = self.study_dir / f"trial-{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir.resolve()))  # where on the machine of trial.user_attrs["host"]
        self.ran_here.append(trial.number)
        retry = trial.user_attrs.get("retry_of")
        shown = ", ".join(f"{key}={_short(value)}" for key, value in values.items())
        self.log(f"trial {trial.number} ({len(self.ran_here)} in this process{f', retrying trial {retry}' if retry is not None else ''}): {shown}")
        try:
            config = load_config(self.recipe, [*self.trial_overrides, *(assignment(key, value) for key, value in values.items()),
                                               f"output_dir={run_dir}", "monitoring.samples=0"])
            reporter = _reporter(trial, self.objective)
            train(config, console=self.console, log=lambda message: self.log(f"  {message}"), callbacks=[reporter])
            value = kept_value(Run(run_dir).metrics(), self.objective, config)
        except KeyboardInterrupt:  # Optuna marks the trial failed; its values wait for the next togi tune
            trial.set_user_attr("error", "interrupted: Ctrl-C while it ran")
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except Exception as error:
            trial.set_user_attr("error", str(error) or type(error).__name__)
            self.log(f"trial {trial.number} failed: {error}")
            raise
        if value is None:
            trial.set_user_attr("error", f"no evaluation measured {self.objective}")
            raise TuneFailed(f"trial {trial.number}: no evaluation measured {self.objective}",
                             "lower monitoring.eval_every below the number of training steps")
        if reporter.pruned_at is not None:
            trial.set_user_attr("pruned_at", reporter.pruned_at)
            Run(run_dir).write_info(tune={"study": self.study_name, "trial": trial.number, "state": "pruned", "step": reporter.pruned_at})
            self.log(f"trial {trial.number} pruned at step {reporter.pruned_at}: {self.objective} {value:.4f} trails the other trials there")
            raise optuna.TrialPruned(f"pruned at step {reporter.pruned_at}")
        Run(run_dir).write_info(tune={"study": self.study_name, "trial": trial.number, "state": "complete", "value": value})
        self.log(f"trial {trial.number}: {self.objective} {value:.4f}")
        return value

    # ---------- the end ----------
    def summarize(self, study: Any) -> TuneResult:
        rows = [_row(trial) for trial in study.get_trials(deepcopy=False)]
        complete = [row for row in rows if row.state == "complete"]
        best = (max if self.direction == "maximize" else min)(complete, key=lambda row: row.value) if complete else None
        table = self.study_dir / "trials.csv"
        atomic_write_text(table, _csv(rows, [parameter.key for parameter in self.space.parameters]))
        best_recipe = self.write_best_recipe(best, len(rows)) if best else None
        plot = None
        if complete:
            from togi.train.plot import plot_study

            plot = plot_study(study, rows, self.study_dir / "study.png", objective=self.objective, direction=self.direction)
        return TuneResult(self.study_dir, self.study_name, self.storage_url, self.objective, self.direction, rows, best, best_recipe, plot, table,
                          list(self.ran_here))

    def write_best_recipe(self, best: TrialRow, total: int) -> Path:
        """The recipe with the best trial's values, as a YAML file ``togi train`` takes as it is: a new run directory
        beside the trials, and the held-out samples of the recipe (trials skip them)."""
        config = load_config(self.recipe, [*self.trial_overrides, *(assignment(key, value) for key, value in best.params.items()),
                                           f"output_dir={self.study_dir / 'best'}"])
        header = (f"# togi tune: the best of {total} trials of study {self.study_name} ({self.storage_url})\n"
                  f"# trial {best.number}: {self.objective} {best.value:.4f} with "
                  + ", ".join(f"{key}={_short(value)}" for key, value in best.params.items())
                  + f"\n# recipe {self.recipe}, search space {self.space.path}\n#   togi train {self.study_dir / 'best-recipe.yaml'}\n")
        path = self.study_dir / "best-recipe.yaml"
        atomic_write_text(path, header + config.to_yaml())
        return path


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _row(trial: Any) -> TrialRow:
    state = trial.state.name.lower()
    seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete and trial.datetime_start else None
    attrs = trial.user_attrs
    note = ""
    if state == "pruned":
        note = f"pruned at step {attrs.get('pruned_at', '?')}"
    elif state == "fail":
        state, note = "failed", str(attrs.get("error", ""))
    if attrs.get("retry_of") is not None:
        note = f"retries trial {attrs['retry_of']}" + (f"; {note}" if note else "")
    value = trial.value if state == "complete" else (trial.intermediate_values[max(trial.intermediate_values)] if trial.intermediate_values else None)
    return TrialRow(trial.number, state, value, dict(trial.params), seconds, attrs.get("run_dir"), note)


def _csv(rows: list[TrialRow], keys: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", "value", *keys, "seconds", "run_dir", "note"])
    for row in rows:
        writer.writerow([row.number, row.state, "" if row.value is None else row.value, *(row.params.get(key, "") for key in keys),
                         "" if row.seconds is None else round(row.seconds, 1), row.run_dir or "", row.note])
    return buffer.getvalue()
