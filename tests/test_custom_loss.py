"""training.loss: a loss of the user's (module:function or a file), or a built-in, takes the training steps' loss;
it is checked before the model loads and on one batch before the first step, recorded in run.json, and a run
with it resumes like any other."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import distinct_chats, write_jsonl
from togi.config import BUILT_IN_LOSSES, ConfigError, load_config
from togi.train import train
from togi.train.custom_loss import BUILT_IN, LossError, contrastive, focal, label_smoothing, load_custom_loss, next_token_targets

USER_LOSSES = '''
import torch
import torch.nn.functional as F
from togi.train.custom_loss import next_token_targets


def scaled(outputs, labels, batch, factor=2.0):
    """The next-token loss times a factor: a loss whose value shows it was used."""
    logits, targets = next_token_targets(outputs.logits.float(), labels, batch)
    return factor * F.cross_entropy(logits, targets, ignore_index=-100)


def one_argument(outputs):
    return outputs.logits.mean()


def per_token(outputs, labels, batch):
    return outputs.logits.float().mean(dim=-1).flatten()


def detached(outputs, labels, batch):
    return torch.tensor(outputs.logits.float().mean().item())


def broken(outputs, labels, batch):
    return outputs.logits.mean() / 0 if labels.sum() > 10**12 else outputs.missing_attribute
'''


@pytest.fixture
def project(tmp_path, tiny_model_dir, monkeypatch):
    (tmp_path / "my_losses.py").write_text(USER_LOSSES)
    chats = distinct_chats(24)
    write_jsonl(tmp_path / "train.jsonl", chats)
    monkeypatch.chdir(tmp_path)
    return SimpleNamespace(folder=tmp_path, model=tiny_model_dir)


def recipe(project, *overrides: str, out: str = "run"):
    return load_config(None, [f"model={project.model}", "data.train_file=train.jsonl", "data.val_ratio=0", f"output_dir={out}",
                              "training.max_steps=4", "training.batch_size=4", "training.gradient_accumulation=1", "lora.dropout=0",
                              "monitoring.samples=0", *overrides])


def first_train_loss(run_dir: Path) -> float:
    return next(json.loads(line)["train_loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "train_loss" in line)


def test_a_loss_from_the_users_module_takes_the_training_steps_and_run_json_records_it(project):
    plain = train(recipe(project, out="plain"), log=lambda message: None)
    custom = train(recipe(project, "training.loss=my_losses:scaled", "training.loss_options={factor: 3.0}", out="custom"),
                   log=lambda message: None)
    # the first step, before any update: three times the plain next-token loss (bf16 autocast on some CPUs: ~1%)
    assert first_train_loss(custom.run_dir) == pytest.approx(3 * first_train_loss(plain.run_dir), rel=0.02)
    recorded = json.loads((custom.run_dir / "run.json").read_text())["loss"]
    assert recorded["name"] == "my_losses:scaled" and recorded["options"] == {"factor": 3.0}
    assert recorded["file"] == str(project.folder / "my_losses.py") and len(recorded["sha256"]) == 64
    assert load_config(custom.run_dir / "config.yaml").training.loss == "my_losses:scaled"


def test_a_run_with_a_loss_from_a_file_resumes_after_sigkill_as_if_never_stopped(project):
    def command(out: str) -> list[str]:
        return [sys.executable, "-m", "togi", "train", "--data", "train.jsonl", "--model", str(project.model), "--output-dir", out,
                "--max-steps", "24", "--set", "training.gradient_accumulation=1", "--set", "monitoring.save_every=8",
                "--set", "data.val_ratio=0", "--set", "monitoring.samples=0", "--set", "training.loss=my_losses.py:scaled"]

    subprocess.run(command("whole"), check=True, capture_output=True)
    killed = subprocess.Popen(command("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = project.folder / "killed" / "checkpoints" / "checkpoint-8" / "trainer_state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (project.folder / "killed" / "adapter").exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "togi", "train", "--resume", "killed"], check=True, capture_output=True)
    whole = load_file(project.folder / "whole" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(project.folder / "killed" / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[key], resumed[key]) for key in whole)
    assert json.loads((project.folder / "killed" / "run.json").read_text())["loss"]["name"] == "my_losses.py:scaled"


@pytest.mark.parametrize(("reference", "words"), [
    ("my_losses:one_argument", "cannot be called as loss(outputs, labels, batch)"),
    ("my_losses:nothing_here", "my_losses has no function nothing_here"),
    ("no_such_module:loss", "no module no_such_module"),
    ("losses/missing.py:loss", "no file losses/missing.py"),
])
def test_a_loss_that_cannot_be_called_is_named_before_any_model_loads(project, reference, words):
    with pytest.raises(LossError, match="training.loss") as raised:
        train(recipe(project, f"training.loss={reference}", "model=/no/such/model"), log=lambda message: None)
    assert words in str(raised.value)  # the model path is wrong too, and was never reached


@pytest.mark.parametrize(("reference", "words"), [
    ("my_losses:per_token", "returned a tensor of shape"),
    ("my_losses:detached", "no trained weight reaches"),
    ("my_losses:broken", "failed on the first batch: AttributeError"),
])
def test_a_loss_that_fails_on_a_batch_is_named_before_the_first_step(project, reference, words):
    with pytest.raises(LossError, match=words):
        train(recipe(project, f"training.loss={reference}", out="failed"), log=lambda message: None)
    assert not (project.folder / "failed" / "metrics.jsonl").exists()


def test_the_command_line_shows_a_bad_loss_in_one_line_with_a_hint(project):
    result = subprocess.run([sys.executable, "-m", "togi", "train", "--data", "train.jsonl", "--model", str(project.model),
                             "--set", "training.loss=my_losses:one_argument"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "training.loss my_losses:one_argument cannot be called" in result.stderr and "hint:" in result.stderr


def test_a_recipe_names_a_loss_that_is_no_loss_and_options_without_one(project):
    with pytest.raises(ConfigError, match="neither a built-in loss"):
        recipe(project, "training.loss=smooth")
    with pytest.raises(ConfigError, match="training.loss_options"):
        recipe(project, "training.loss_options={gamma: 1}")
    with pytest.raises(ConfigError, match="pairs of texts"):
        recipe(project, "training.loss=contrastive")
    with pytest.raises(ConfigError, match="data.label_loss_weight"):
        recipe(project, "training.loss=focal", "data.label_loss_weight=3", "monitoring.label_pattern='(x)'")
    assert set(BUILT_IN) == set(BUILT_IN_LOSSES)


def test_next_token_targets_never_ask_an_example_to_predict_the_next_one():
    labels = torch.tensor([[-100, 5, 6, 7, -100, 8, 9]])
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])  # two examples in one padding-free row
    logits, targets = next_token_targets(torch.zeros(1, 7, 11), labels, {"position_ids": positions})
    assert logits.shape == (7, 11) and targets.tolist() == [5, 6, 7, -100, 8, 9, -100]


def test_the_built_in_losses_are_what_their_names_say():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 1, 1])
    outputs = SimpleNamespace(logits=logits)
    plain = F.cross_entropy(logits, labels)
    assert torch.allclose(label_smoothing(outputs, labels, {}, smoothing=0.0), plain)
    assert torch.allclose(label_smoothing(outputs, labels, {}, smoothing=0.2), F.cross_entropy(logits, labels, label_smoothing=0.2))
    assert torch.allclose(focal(outputs, labels, {}, gamma=0.0), plain)
    assert focal(outputs, labels, {}, gamma=2.0) < plain  # confident right answers weigh less
    weights = [1.0, 2.0, 3.0, 4.0]
    assert torch.allclose(focal(outputs, labels, {}, gamma=0.0, alpha=weights),
                          (F.cross_entropy(logits, labels, reduction="none") * torch.tensor(weights)[labels]).mean())
    same = SimpleNamespace(logits=torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [2.0, 0.0]]))
    assert contrastive(same, torch.tensor([1, 1, 0, 0]), {}) == pytest.approx(0, abs=1e-9)  # alike pairs of one label: nothing to pull
    assert contrastive(same, torch.tensor([1, 0, 0, 1]), {}, margin=1.0) == pytest.approx(1.0, abs=1e-4)  # alike, but of two labels: margin²
    assert load_custom_loss("focal", {"gamma": 1.0}).function is focal
