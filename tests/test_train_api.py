"""`togi.train(config)`: one entry point for every recipe, used alike by Python users, the CLI and the server.

The config's task and stage choose the recipe; every recipe returns a RunResult and gets the same setup
around its trainer (the run directory, resuming, the user's callbacks, the NaN-loss guard).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import togi
from togi.config import load_config
from togi.train import RunResult, TrainingFailed

from conftest import REPO, build_tiny_model, distinct_chats, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


def preference_pairs(count: int) -> list[dict]:
    polite, curt = ["はい、在庫がございます。", "承知しました。本日発送いたします。"], ["The quick brown fox", "lazy dog jumps"]
    return [{"prompt": [{"role": "user", "content": f"質問{i}: 商品番号{i * 37}について教えてください。"}],
             "chosen": [{"role": "assistant", "content": polite[i % 2]}],
             "rejected": [{"role": "assistant", "content": curt[i % 2]}]} for i in range(count)]


def recipe(tmp_path, model_dir, name: str, data, *extra: str):
    return load_config(None, [f"model={model_dir}", f"data.train_file={data}", f"output_dir={tmp_path / name}", "training.max_steps=4",
                              "training.batch_size=4", "training.gradient_accumulation=1", "training.learning_rate=5e-3",
                              "monitoring.log_every=1", "monitoring.samples=0", *extra])


class StepCounter(TrainerCallback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def test_togi_train_stays_the_function_however_the_training_package_is_imported(tmp_path, tiny_model_dir):
    """In a fresh interpreter, as a user's script runs: `togi.train` is used, the training package's own modules
    are imported, and `togi.train(config)` trains a second time."""
    data = write_jsonl(tmp_path / "chats.jsonl", distinct_chats(12))
    script = textwrap.dedent(f"""
        import json, togi
        def config(name):
            return togi.load_config(None, ["model={tiny_model_dir}", "data.train_file={data}", "output_dir={tmp_path}/" + name,
                                           "training.max_steps=1", "data.val_ratio=0", "monitoring.samples=0"])
        first = togi.train(config("first"), log=lambda message: None)
        import togi.train.sft
        from togi.train.preference import preference_rows
        second = togi.train(config("second"), log=lambda message: None)
        print(json.dumps([callable(togi.train), type(first).__name__, str(first.output_dir), str(second.output_dir)]))
    """)
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert finished.returncode == 0, finished.stderr
    still_callable, result_type, first, second = json.loads(finished.stdout.splitlines()[-1])
    assert still_callable and result_type == "RunResult"
    assert first == str(tmp_path / "first" / "adapter") and second == str(tmp_path / "second" / "adapter")


def test_the_package_root_owns_the_api_names():
    import togi.train.sft  # noqa: F401  (a module of the training package, imported after `import togi`)
    from togi.runs import Run
    from togi.version import __version__

    assert callable(togi.train) and togi.train.__module__ == "togi.train"
    assert (togi.Run, togi.RunResult, togi.__version__) == (Run, RunResult, __version__)
    assert togi.load_config is load_config


def test_a_dpo_recipe_runs_the_dpo_stage_with_the_users_callbacks(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(16))
    counter = StepCounter()
    result = togi.train(recipe(tmp_path, tiny_model_dir, "dpo", data, "stage=dpo"), log=lambda message: None, callbacks=[counter])
    assert isinstance(result, RunResult) and (result.status, result.steps, result.output_dir) == ("succeeded", 4, tmp_path / "dpo" / "adapter")
    assert counter.steps == [1, 2, 3, 4]
    run = togi.Run.open(result.run_dir)
    assert run.info["stage"] == "dpo" and run.info["status"] == "succeeded" and run.info["result"]["steps"] == 4
    stage_logs = [json.loads(line) for line in run.stage_metrics_path.read_text().splitlines()]
    assert any("rewards/margins" in record for record in stage_logs)  # DPO's own measures, which SFT does not log
    assert [record["step"] for record in run.metrics() if "train_loss" in record] == [1, 2, 3, 4]
    assert result.train_loss == run.metrics()[-1]["train_loss"]
    assert "Trained by the dpo stage" in run.card_path.read_text(encoding="utf-8")


def test_a_classification_recipe_trains_a_classifier_and_refuses_to_resume(tmp_path, tiny_model_dir):
    rows = [{"text": f"返品 {i} 送料 当社", "label": "返品"} if i % 2 else {"text": f"玄米 {i} 炊飯器 モード", "label": "炊飯"} for i in range(24)]
    data = write_jsonl(tmp_path / "texts.jsonl", rows)
    config = recipe(tmp_path, tiny_model_dir, "classifier", data, "task=classification", "method=full", "data.val_ratio=0.25")
    result = togi.train(config, log=lambda message: None)
    assert (result.labels, result.output_dir.name) == (["炊飯", "返品"], "model")
    assert set(result.scores) == {"accuracy", "macro_f1", "majority_baseline"}
    saved = json.loads((result.output_dir / "config.json").read_text(encoding="utf-8"))
    assert saved["architectures"] == ["LlamaForSequenceClassification"] and saved["id2label"] == {"0": "炊飯", "1": "返品"}
    assert togi.Run.open(result.run_dir).info["task"] == "classification"
    with pytest.raises(TrainingFailed, match="cannot be resumed") as refused:
        togi.train(config, resume_dir=result.run_dir)
    assert refused.value.hint == "train again with a new output_dir"


def test_a_nan_loss_stops_a_preference_stage_as_it_stops_sft(tmp_path, tokenizer):
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "broken-model")
    tokenizer.save_pretrained(tmp_path / "broken-model")
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(8))
    with pytest.raises(TrainingFailed, match="NaN or infinite at step 1"):
        togi.train(recipe(tmp_path, tmp_path / "broken-model", "dpo", data, "stage=dpo"), log=lambda message: None)
    run = togi.Run.open(tmp_path / "dpo")
    assert run.info["status"] == "failed" and not run.adapter_dir.exists()


def test_a_dpo_run_resumed_from_its_checkpoint_ends_as_the_uninterrupted_run(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(16))
    whole = togi.train(recipe(tmp_path, tiny_model_dir, "whole", data, "stage=dpo", "monitoring.save_every=2"), log=lambda message: None)
    # The run as a kill after its first checkpoint would have left it: checkpoint-2, and metrics logged past it.
    killed = tmp_path / "killed"
    shutil.copytree(whole.run_dir, killed)
    shutil.rmtree(killed / "adapter")
    shutil.rmtree(killed / "checkpoints" / "checkpoint-4")
    counter = StepCounter()
    resumed = togi.train(togi.Run.open(killed).config, resume_dir=killed, log=lambda message: None, callbacks=[counter])
    assert resumed.run_dir == killed and resumed.steps == 4 and counter.steps == [3, 4]  # it went on from step 2
    before, after = load_file(whole.output_dir / "adapter_model.safetensors"), load_file(resumed.output_dir / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[name], after[name]) for name in before)
    assert [r["step"] for r in togi.Run.open(killed).metrics() if "train_loss" in r] == [1, 2, 3, 4]
    assert resumed.train_loss == whole.train_loss


def test_resuming_a_stage_with_changed_data_is_refused(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_pairs(8))
    result = togi.train(recipe(tmp_path, tiny_model_dir, "run", data, "stage=dpo", "training.max_steps=1"), log=lambda message: None)
    write_jsonl(data, preference_pairs(9))
    with pytest.raises(TrainingFailed, match="changed since this run started"):
        togi.train(togi.Run.open(result.run_dir).config, resume_dir=result.run_dir, log=lambda message: None)


@pytest.mark.parametrize("kind", [[], ["stage=dpo"], ["task=classification", "method=full"]], ids=["sft", "dpo", "classification"])
def test_every_recipe_is_checked_against_this_machine_before_anything_loads(tmp_path, kind):
    """`togi.train` checks the machine once, for every recipe: the model and data named here do not exist, and
    nothing gets as far as looking for them."""
    import importlib.util

    from togi.config import ConfigError

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here: report_to wandb runs")
    config = load_config(None, ["model=no/such-model", f"data.train_file={tmp_path / 'absent.jsonl'}", f"output_dir={tmp_path / 'run'}",
                                "monitoring.report_to=wandb", *kind])
    with pytest.raises(ConfigError) as refused:
        togi.train(config, log=lambda message: None)
    assert [issue.path for issue in refused.value.issues] == ["monitoring.report_to"] and "pip install wandb" in str(refused.value)
    assert not (tmp_path / "run").exists()
