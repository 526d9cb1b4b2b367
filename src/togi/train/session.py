"""What every recipe does around its trainer, written once, so that SFT, the preference stages and the
classifier open, resume, watch, fail and finish a run alike:

- the run directory: a new run needs an empty one; ``resume_dir`` continues a run from its last complete
  checkpoint, and refuses data files that changed since it started;
- warnings, logged as they come and kept for the result and run.json;
- togi's callbacks beside the user's: metrics.jsonl and the loss plot, the NaN-loss and overfitting guard,
  the CPU thread governor, the progress bar, early stopping;
- running the trainer: an out-of-memory error or a NaN loss stops the run with what to do about it;
- the end: the result read back from the metrics, recorded in run.json, and the model card;
- several processes (``distributed.py``): they agree on rank 0's run directory, and only rank 0 prints and writes it.

A recipe reads as::

    session = TrainingSession.open(config, resume_dir=..., console=..., log=..., callbacks=...)
    fingerprints = session.fingerprint_data()          # before anything is written
    ... data, tokenizer and model ...
    session.start(data=..., **what run.json should record)
    trainer = Trainer(..., callbacks=session.callbacks(has_val=...))
    output = session.train(trainer)
    ... save the model into session.output_dir ...
    return session.finish(trainer, output, parameters=...)
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from togi.config import TrainConfig
from togi.models.device import DevicePlan, plan_device
from togi.runs import Run, checkpoint_step
from togi.train.result import RunResult, TrainingFailed
from togi.train.callbacks import HealthGuard, MetricsRecorder, RichProgress
from togi.train.distributed import Processes, join, rank_zeros, wait_for_everyone
from togi.train.methods import ParameterCount
from togi.train.run_dir import default_run_dir, file_fingerprint, library_versions, write_model_card
from togi.train.threads import CpuThreadGovernor, thread_count_restored, threads_chosen_by_user

if TYPE_CHECKING:
    from togi.train.custom_loss import CustomLoss

OOM_REMEDIES = (
    "halve training.batch_size and double training.gradient_accumulation (same effective batch); "
    "turn on training.gradient_checkpointing; use method qlora on a GPU; lower data.max_length; "
    "or let training.auto_batch find the largest batch that fits"
)
TASK_SCORES = ("accuracy", "macro_f1", "exact_match", "rouge_l")  # what an evaluation may score besides the loss


def _finished_at(checkpoint: Path) -> bool:
    import json

    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return bool(state.get("max_steps")) and state.get("global_step", 0) >= state["max_steps"]


def is_out_of_memory(error: BaseException) -> bool:
    message = str(error).lower()
    return isinstance(error, MemoryError) or "out of memory" in message or "can't allocate memory" in message


class TrainingSession:
    def __init__(self, config: TrainConfig, run: Run, *, resuming: bool, console: Any, log: Callable[[str], None],
                 callbacks: Sequence[Any], processes: Processes | None = None) -> None:
        self.config, self.run, self.resuming = config, run, resuming
        self.processes = processes or Processes()
        self.checkpoint = run.last_checkpoint() if resuming else None
        self.main = self.processes.main  # only the main process prints and writes the run directory
        self.console, self.log = (console, log) if self.main else (None, lambda message: None)
        self.user_callbacks = list(callbacks)
        self.plan: DevicePlan = plan_device(config.training.precision)
        self.warnings: list[str] = []
        self.guard = HealthGuard(self.warn)
        self.recorder: MetricsRecorder | None = None
        self.loss: CustomLoss | None = None
        self.started = time.perf_counter()

    @classmethod
    def open(cls, config: TrainConfig, *, resume_dir: Path | str | None = None, console: Any = None, log: Callable[[str], None] = print,
             callbacks: Sequence[Any] = (), resumable: bool = True) -> TrainingSession:
        """A session on a new run directory, or on ``resume_dir``. ``resumable`` is False for a recipe that saves
        no checkpoints to continue from."""
        if resume_dir is not None and not resumable:
            raise TrainingFailed(f"a {config.task} run cannot be resumed: it saves no checkpoints to continue from", Path(resume_dir),
                                 hint="train again with a new output_dir")
        processes = Processes.current()
        if processes.several:
            join(plan_device(config.training.precision).device)
        run = Run(Path(resume_dir) if resume_dir else rank_zeros(config.output_dir or default_run_dir(config)))
        if not resume_dir and run.path.exists() and any(run.path.iterdir()):
            raise TrainingFailed(f"{run.path} already holds a run; choose another output_dir"
                                 + (f", or continue it with --resume {run.path}" if resumable else ""), run.path,
                                 "set output_dir (--output-dir) to a new directory")
        wait_for_everyone()  # every process has looked before the main one writes
        return cls(config, run, resuming=resume_dir is not None, console=console, log=log, callbacks=callbacks, processes=processes)

    @property
    def output_dir(self) -> Path:
        return self.run.output_dir_for(self.config)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self.log(f"warning: {message}")

    def fingerprint_data(self) -> dict[str, Any]:
        """The data files' fingerprints. A resumed run must see the data it started with, or it would silently
        train on something else."""
        data = self.config.data
        fingerprints = {"train": file_fingerprint(data.train_file), "val": file_fingerprint(data.val_file) if data.val_file else None}
        if self.resuming:
            recorded = self.run.info.get("data", {})
            for name, fingerprint in fingerprints.items():
                before = recorded.get(name)
                if before and fingerprint and before["sha256"] != fingerprint["sha256"]:
                    raise TrainingFailed(f"{fingerprint['path']} changed since this run started, so resuming would train on other data; "
                                         "start a new run instead", self.run.path)
        return fingerprints

    def custom_loss(self) -> CustomLoss | None:
        """training.loss, found and its signature checked (before any model loads); run.json records it. A resumed run
        whose loss file changed since it started is warned about: its steps before and after differ in what they minimised."""
        if self.config.training.loss is None:
            return None
        from togi.train.custom_loss import load_custom_loss

        self.loss = load_custom_loss(self.config.training.loss, self.config.training.loss_options)
        before = self.run.info.get("loss", {}).get("sha256") if self.resuming else None
        now = self.loss.record().get("sha256")
        if before and now != before:
            self.warn(f"training.loss: {self.loss.source} changed since this run started; the resumed steps minimise the new version")
        self.log(f"training loss: {self.loss.reference}" + (f" {self.loss.options}" if self.loss.options else "")
                 + " (training.loss; the eval loss stays the model's own)")
        return self.loss

    def dry_run_loss(self, loss: CustomLoss, trainer: Any, dataset: Any) -> None:
        """The loss run once on a batch of the first training examples, as the trainer's collator makes it, before
        the first step; the random state is left as it was, so the run is the one it would have been."""
        import torch

        batch = trainer._prepare_inputs(trainer.data_collator([dataset[index] for index in range(min(2, len(dataset)))]))
        model = trainer.model
        was_training = model.training
        model.train()
        try:
            with torch.random.fork_rng(devices=[]), trainer.autocast_smart_context_manager():
                loss.dry_run(model, batch)
        finally:
            model.train(was_training)

    def start(self, **facts: Any) -> None:
        """Write the recipe and run.json's first record (``facts`` beside the method, model, device and versions, and
        the custom loss); when resuming, forget the metrics a killed run logged after its last checkpoint."""
        if self.resuming:
            self.log(f"resuming from {self.checkpoint}" if self.checkpoint else "no checkpoint was saved yet: starting the run over")
        if self.processes.several:
            strategy = getattr(self.config, "distributed").strategy  # check_runnable lets only recipes with the section get here
            self.log(f"training on {self.processes.describe()} (distributed.strategy {strategy}); rank 0 writes the run directory")
            facts["processes"] = {"world_size": self.processes.world_size, "nodes": self.processes.nodes, "strategy": strategy}
        if not self.main:
            return
        self.run.path.mkdir(parents=True, exist_ok=True)
        self.run.write_config(self.config)
        if self.loss is not None:
            facts["loss"] = self.loss.record()
        self.run.write_info(status="running", method=self.config.method, model=self.config.model, device=self.plan.description,
                            versions=library_versions(), started_at=int(time.time()), **facts)
        if self.resuming:
            self.run.drop_metrics_after(checkpoint_step(self.checkpoint) if self.checkpoint else 0)

    def callbacks(self, *, has_val: bool, recorder: MetricsRecorder | None = None, extra: Sequence[Any] = (),
                  early_stopping: bool = True) -> list[Any]:
        """togi's callbacks, ``extra`` ones of the recipe, then the user's. ``recorder`` replaces the plain
        metrics recorder; early stopping (monitoring.early_stopping_patience) needs validation data, and a recipe
        whose arguments keep the best checkpoint."""
        if not self.main:  # the others train alike; the main process records what they trained
            return [self.guard, *extra, *self.user_callbacks]
        self.recorder = recorder or MetricsRecorder(self.run.metrics_path, self.run.plot_path)
        callbacks = [self.recorder, self.guard, *extra, *self.user_callbacks]
        if self.plan.device == "cpu" and not threads_chosen_by_user():
            callbacks.append(CpuThreadGovernor())
        if self.console is not None:
            callbacks.append(RichProgress(self.console, self.recorder))
        if early_stopping and self.config.monitoring.early_stopping_patience and has_val:
            from transformers import EarlyStoppingCallback

            callbacks.append(EarlyStoppingCallback(early_stopping_patience=self.config.monitoring.early_stopping_patience))
        return callbacks

    def train(self, trainer: Any, around: AbstractContextManager[Any] | None = None) -> Any:
        """Run ``trainer`` (inside ``around``), from the checkpoint when resuming. Out of memory, or a NaN or
        infinite loss, fails the run in run.json and raises TrainingFailed with the remedies."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)  # togi logs to metrics.jsonl and draws its own progress bar
        trainer.remove_callback(ProgressCallback)
        if self.checkpoint is not None and _finished_at(self.checkpoint):
            return self._restore_finished_run(trainer)
        try:
            with thread_count_restored(), around or nullcontext():
                output = trainer.train(resume_from_checkpoint=str(self.checkpoint) if self.checkpoint else None)
        except (RuntimeError, MemoryError) as error:
            if is_out_of_memory(error):
                self._write_info(status="failed", error="out of memory")
                raise TrainingFailed(f"out of memory at batch size {self.config.training.batch_size}: {OOM_REMEDIES}", self.run.path) from None
            raise
        finally:
            if self.recorder is not None:
                self.recorder.refresh_plot()
        if self.guard.bad_loss_step is not None:
            last_good = self.run.last_checkpoint()
            self._write_info(status="failed", error=f"loss became NaN or infinite at step {self.guard.bad_loss_step}",
                                last_good_checkpoint=str(last_good) if last_good else None)
            raise TrainingFailed(
                f"the loss became NaN or infinite at step {self.guard.bad_loss_step}; training stopped and nothing was saved from that step "
                f"(last good checkpoint: {last_good or 'none yet'}). Lower training.learning_rate, keep max_grad_norm at 1.0, "
                "or train in fp32 (training.precision: fp32)", self.run.path)
        return output

    def finish(self, trainer: Any, output: Any, *, parameters: ParameterCount, scores: dict[str, float | None] | None = None,
               labels: Sequence[str] = (), samples: Sequence[Any] = (), **facts: Any) -> RunResult:
        """The result, read back from the run's metrics; recorded in run.json (with ``facts``) and the model card.
        ``scores`` are the recipe's own, beside those of the last evaluation."""
        records = self.run.metrics()
        train_losses = [r["train_loss"] for r in records if "train_loss" in r]
        last_eval = next((r for r in reversed(records) if "eval_loss" in r), {})
        speeds = [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
        evaluated = {name: last_eval[f"eval_{name}"] for name in TASK_SCORES if f"eval_{name}" in last_eval}
        result = RunResult(
            run_dir=self.run.path, output_dir=self.output_dir,
            status="early_stopped" if trainer.state.global_step < trainer.state.max_steps else "succeeded", steps=trainer.state.global_step,
            train_loss=train_losses[-1] if train_losses else output.training_loss, eval_loss=last_eval.get("eval_loss"),
            parameters=parameters, seconds=round(time.perf_counter() - self.started, 1),
            tokens_per_second=round(sum(speeds) / len(speeds), 1) if speeds else None,
            scores={**evaluated, **{name: value for name, value in (scores or {}).items() if value is not None}},
            labels=list(labels), warnings=self.warnings, samples=list(samples),
        )
        if self.main:
            self.run.write_info(status=result.status, finished_at=int(time.time()), output=str(result.output_dir), warnings=self.warnings,
                                result={"steps": result.steps, "train_loss": result.train_loss, "eval_loss": result.eval_loss,
                                        "tokens_per_second": result.tokens_per_second, **result.scores, "seconds": result.seconds},
                                **facts)
            write_model_card(self.run, self.config, self.run.info)
        return result

    def _restore_finished_run(self, trainer: Any) -> Any:
        """A run killed after its last step's checkpoint, before its model was saved: the checkpoint's weights (the best
        one's, when the run keeps the best) are the run's result, as they would have been. transformers, resumed from
        a checkpoint at max_steps, would train one more step before it looks at the step count."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file
        from transformers.trainer_callback import TrainerState
        from transformers.trainer_utils import TrainOutput

        state = TrainerState.load_from_json(str(self.checkpoint / "trainer_state.json"))
        source = Path(state.best_model_checkpoint) if trainer.args.load_best_model_at_end and state.best_model_checkpoint else self.checkpoint
        if (source / "adapter_model.safetensors").is_file():
            set_peft_model_state_dict(trainer.model, load_file(source / "adapter_model.safetensors"))
        elif (source / "model.safetensors.index.json").is_file():
            from transformers.modeling_utils import load_sharded_checkpoint

            load_sharded_checkpoint(trainer.model, str(source))
        else:  # not strict: a tied head is saved once, under the embeddings' name
            trainer.model.load_state_dict(load_file(source / "model.safetensors"), strict=False)
        trainer.state = state
        self.log(f"the run had finished its {state.max_steps} steps at {self.checkpoint.name}: saving its model from there")
        losses = [record["train_loss"] for record in self.run.metrics() if "train_loss" in record]
        return TrainOutput(state.global_step, losses[-1] if losses else 0.0, {})

    def _write_info(self, **updates: Any) -> None:
        if self.main:
            self.run.write_info(**updates)
