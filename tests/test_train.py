"""Training on a tiny in-process model: every method learns, trains only what it should, and its
output loads in the library users already have (PEFT, transformers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from togi.config import load_config
from togi.data.examples import Message
from togi.data.template import tokenize_chat
from togi.train import TrainingFailed, train
from togi.train.data import IGNORE_INDEX, tokenize_examples
from togi.data.examples import ChatExample, Source

from conftest import build_tiny_model, chat, distinct_chats, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", distinct_chats(48))


def run(tmp_path, model_dir, train_file, method, *extra: str, steps: int = 12, learning_rate: float = 1e-2):
    config = load_config(None, [
        f"model={model_dir}", f"method={method}", f"data.train_file={train_file}", f"output_dir={tmp_path / 'run'}",
        f"training.max_steps={steps}", "training.batch_size=4", "training.gradient_accumulation=1",
        f"training.learning_rate={learning_rate}", "training.warmup_ratio=0", "monitoring.eval_every=6",
        "monitoring.save_every=6", *extra,
    ])
    return train(config, log=lambda message: None)


def train_losses(result) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
            if "train_loss" in json.loads(line)]


def assert_loss_falls(result) -> None:
    losses = train_losses(result)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses


def original_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


@pytest.mark.parametrize("method,learning_rate", [("lora", 1e-2), ("dora", 1e-2), ("prompt_tuning", 1e-1), ("prefix_tuning", 1e-2)])
def test_adapter_methods_learn_and_load_with_plain_peft(tmp_path, tiny_model_dir, train_file, method, learning_rate):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(tmp_path, tiny_model_dir, train_file, method, learning_rate=learning_rate)
    assert result.status == "succeeded" and result.output_dir == tmp_path / "run" / "adapter"
    assert_loss_falls(result)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, result.output_dir)
    ids = torch.tensor([[1, 5, 9, 20]])
    with torch.no_grad():
        with tuned.disable_adapter():
            plain_logits = tuned(input_ids=ids).logits
        tuned_logits = tuned(input_ids=ids).logits[:, -ids.shape[1]:]  # prompt tuning also returns its virtual positions
    assert not torch.allclose(plain_logits, tuned_logits)  # the adapter does something
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        assert torch.equal(plain_logits, reference(input_ids=ids).logits)  # and the base is untouched
    assert result.parameters.trainable < result.parameters.total / 2


def test_lora_minimal_preset_trains_only_query_and_value_projections(tmp_path, tiny_model_dir, train_file):
    result = run(tmp_path, tiny_model_dir, train_file, "lora", "lora.targets=minimal", steps=2)
    keys = load_file(result.output_dir / "adapter_model.safetensors").keys()
    assert {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in keys} == {"q_proj", "v_proj"}
    assert json.loads((result.output_dir / "adapter_config.json").read_text())["r"] == 16


def test_rslora_scales_the_update_by_alpha_over_the_square_root_of_the_rank_in_plain_peft(tmp_path, tiny_model_dir, train_file):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(tmp_path, tiny_model_dir, train_file, "lora", "lora.rslora=true", "lora.r=64", "lora.alpha=16", steps=2)
    assert json.loads((result.output_dir / "adapter_config.json").read_text())["use_rslora"] is True
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.output_dir)
    scalings = {module.scaling["default"] for module in tuned.modules() if hasattr(module, "scaling") and isinstance(module.scaling, dict)}
    assert scalings == {16 / 64**0.5}  # 2.0, where plain LoRA would scale by 16 / 64 = 0.25


def test_lora_last_blocks_adapts_only_those_blocks_and_the_backward_pass_stops_there(tmp_path, tiny_model_dir, train_file, cli):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = run(tmp_path, tiny_model_dir, train_file, "lora", "lora.last_blocks=1", steps=4)
    saved = load_file(result.output_dir / "adapter_model.safetensors")
    assert saved and all(".layers.1." in key for key in saved)  # the tiny model has blocks 0 and 1
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), result.output_dir, is_trainable=True)
    tuned(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    first_block = tuned.base_model.model.model.layers[0]
    assert all(parameter.grad is None and not parameter.requires_grad for parameter in first_block.parameters())

    outcome = cli("train", "--model", tiny_model_dir, "--data", train_file, "--output-dir", tmp_path / "too-many", "--set", "lora.last_blocks=3")
    assert outcome.exit_code == 2  # a recipe error, before anything trains
    assert "lora.last_blocks: the model has only 2 blocks" in outcome.output and "use a number from 1 to 2" in outcome.output


def test_full_fine_tuning_changes_every_weight_and_saves_a_plain_model(tmp_path, tiny_model_dir, train_file):
    from transformers import AutoModelForCausalLM

    result = run(tmp_path, tiny_model_dir, train_file, "full", learning_rate=2e-3)
    assert_loss_falls(result)
    assert result.output_dir.name == "model"
    AutoModelForCausalLM.from_pretrained(result.output_dir)
    before, after = original_weights(tiny_model_dir), load_file(result.output_dir / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == set(before)


def test_freeze_trains_only_the_last_blocks_and_the_named_modules(tmp_path, tiny_model_dir, train_file):
    result = run(tmp_path, tiny_model_dir, train_file, "freeze", "freeze.trainable_blocks=1", "freeze.trainable_modules=[lm_head]",
                 learning_rate=2e-3)
    assert_loss_falls(result)
    before, after = original_weights(tiny_model_dir), load_file(result.output_dir / "model.safetensors")
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {name for name in before if name.startswith("model.layers.1.") or name == "lm_head.weight"}


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tokenizer, train_file):
    model = build_tiny_model(tokenizer)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model_dir = tmp_path / "broken-model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    with pytest.raises(TrainingFailed, match="NaN or infinite at step 1"):
        run(tmp_path, model_dir, train_file, "lora")
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and info["last_good_checkpoint"] is None
    assert not (tmp_path / "run" / "adapter").exists() and not list((tmp_path / "run" / "checkpoints").glob("checkpoint-*"))


def test_the_run_directory_describes_the_run(tmp_path, tiny_model_dir, train_file):
    result = run(tmp_path, tiny_model_dir, train_file, "lora", steps=6)
    run_dir = result.run_dir
    for name in ("config.yaml", "run.json", "metrics.jsonl", "loss.png", "README.md", "data/train.jsonl", "data/val.jsonl"):
        assert (run_dir / name).is_file(), name
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "succeeded" and info["data"]["train"]["sha256"] and info["versions"]["peft"]
    assert info["data"]["train_examples"] + info["data"]["val_examples"] == 48
    assert "trainable params:" in info["parameters"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "train_loss" in r)
    assert {"step", "train_loss", "grad_norm", "learning_rate", "train_token_accuracy", "tokens_seen", "tokens_per_second",
            "peak_memory_mb"} <= set(step)
    seen = [r["tokens_seen"] for r in records if "train_loss" in r]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)  # real tokens, counted on as training goes
    assert any("eval_loss" in r and "eval_token_accuracy" in r for r in records)
    assert (run_dir / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert load_config(run_dir / "config.yaml").method == "lora"  # the resolved recipe reads back


def test_loss_falls_only_on_trained_positions_including_weight_zero(tokenizer):
    messages = [Message("user", "返品できますか？"), Message("assistant", "確認します。", weight=0),
                Message("user", "送料は？"), Message("assistant", "当社が負担します。")]
    rows = tokenize_examples([ChatExample(messages=messages, source=Source("-", 1, 0))], tokenizer, max_length=512).dataset
    labels = rows[0]["labels"]
    sequence = tokenize_chat(tokenizer, messages)
    answer_start = sequence.text.index("当社が負担します。")
    expected = [i for i, (start, _) in enumerate(sequence.offsets) if start >= answer_start]
    assert [i for i, label in enumerate(labels) if label != IGNORE_INDEX] == expected
    assert "確認します" not in "".join(sequence.text[sequence.offsets[i][0]:sequence.offsets[i][1]] for i in expected)
    assert tokenizer.convert_ids_to_tokens(labels[expected[-2]]) == "<|im_end|>"


def test_packed_examples_never_attend_to_each_other(tokenizer):
    """A padding-free batch, exactly as TRL's collator builds it from togi's tokenized examples, gives
    every example the logits it gets alone. (Training runs without a KV cache, as TRL forces: with a
    cache, transformers would not derive the block-diagonal mask from the position ids.)"""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    model = build_tiny_model(tokenizer).eval()
    examples = [{"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9]}, {"input_ids": [10, 11, 12], "labels": [10, 11, 12]}]
    batch = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(examples)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]] and "attention_mask" not in batch
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits for e in examples], dim=1)
    assert torch.allclose(together, alone, atol=1e-5)


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path, tiny_model_dir, train_file):
    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "togi", "train", "--data", str(train_file), "--model", str(tiny_model_dir),
                "--output-dir", str(out), "--max-steps", "30", "--set", "training.gradient_accumulation=1",
                "--set", "monitoring.save_every=10", "--set", "monitoring.eval_every=10"]

    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True)
    killed = subprocess.Popen(command(tmp_path / "killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "adapter").exists(), "the run finished before it could be killed"
    subprocess.run([sys.executable, "-m", "togi", "train", "--resume", str(tmp_path / "killed")], check=True, capture_output=True)
    whole = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)

    def final_loss(run_dir: Path) -> float:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "train_loss" in line][-1]["train_loss"]

    assert final_loss(tmp_path / "whole") == final_loss(tmp_path / "killed")


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_model_dir):
    # Validation answers contradict the training answers, so fitting the training set soon makes the
    # eval loss worse: with patience 1 the run stops early and restores the best evaluation's weights.
    questions = [f"質問{i}: 商品{i * 37 % 101}の色は何色ですか？" for i in range(24)]
    train_file = write_jsonl(tmp_path / "train.jsonl", [chat(q, f"赤色です。番号{i}") for i, q in enumerate(questions)])
    val_file = write_jsonl(tmp_path / "val.jsonl", [chat(q, f"青色です。番号{i}") for i, q in enumerate(questions[:8])])
    result = run(tmp_path, tiny_model_dir, train_file, "lora", f"data.val_file={val_file}", "monitoring.early_stopping_patience=1",
                 "monitoring.eval_every=2", "monitoring.save_every=2", "monitoring.keep_checkpoints=1", steps=60, learning_rate=3e-2)
    assert result.status == "early_stopped" and result.steps < 60
    evals = [json.loads(line)["eval_loss"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    best = min(range(len(evals)), key=evals.__getitem__)
    assert evals[best + 1] >= evals[best]  # stopped after a worse evaluation
    state = json.loads(next((result.run_dir / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] == min(evals)


def test_resuming_with_changed_data_is_refused(tmp_path, tiny_model_dir):
    train_file = write_jsonl(tmp_path / "train.jsonl", distinct_chats(20))
    result = run(tmp_path, tiny_model_dir, train_file, "lora", "monitoring.samples=0", steps=2)
    write_jsonl(train_file, distinct_chats(21))
    with pytest.raises(TrainingFailed, match="changed since this run started"):
        train(load_config(result.run_dir / "config.yaml"), resume_dir=result.run_dir, log=lambda message: None)


def test_a_tokenizer_without_a_chat_template_trains_with_the_recorded_fallback(tmp_path, train_file):
    from conftest import build_tokenizer

    tokenizer = build_tokenizer(chat_template=None)
    model_dir = tmp_path / "no-template"
    build_tiny_model(tokenizer).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    result = run(tmp_path, model_dir, train_file, "lora", "monitoring.samples=0", steps=2)
    assert "fallback" in json.loads((result.run_dir / "run.json").read_text())["chat_template"]
    assert any("no chat template" in warning for warning in result.warnings)
    assert "<|im_start|>assistant" in (result.output_dir / "chat_template.jinja").read_text()  # exported with the adapter


def test_a_run_directory_as_the_base_model_is_named_with_the_way_to_its_weights(tmp_path, tiny_model_dir, train_file, cli):
    from togi.runs import RunDirectoryError

    config = load_config(None, [f"model={tiny_model_dir}", f"data.train_file={train_file}", f"output_dir={tmp_path / 'run'}",
                                "training.max_steps=1", "monitoring.samples=0"])
    run_dir = train(config).run_dir
    with pytest.raises(RunDirectoryError) as raised:
        train(config.model_copy(update={"model": str(run_dir), "output_dir": tmp_path / "second"}))
    assert "is a togi run directory, not a model" in str(raised.value)
    assert f"togi export {run_dir} --to merged" in raised.value.hint
    assert not (tmp_path / "second").exists()
    checked = cli("data", "check", train_file, "--model", run_dir)
    assert checked.exit_code == 2 and f"{run_dir} is a togi run directory, not a model" in checked.stderr


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_run_killed_after_its_last_checkpoint_saves_that_checkpoint_without_another_step(tmp_path, tiny_model_dir, train_file, method):
    """Killed between the checkpoint of its last step and the save of its model: resuming saves the checkpoint's weights
    (transformers would train a step past max_steps first, at a learning rate past the schedule's end)."""
    result = run(tmp_path, tiny_model_dir, train_file, method, "training.scheduler=constant", steps=6, learning_rate=1e-2)
    finished = {path.name: path.read_bytes() for path in result.output_dir.iterdir() if path.suffix == ".safetensors"}
    for path in result.output_dir.iterdir():
        path.unlink()
    result.output_dir.rmdir()
    again = train(load_config(result.run_dir / "config.yaml"), resume_dir=result.run_dir, log=lambda message: None)
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert max(record["step"] for record in records) == 6 and again.steps == 6
    saved = {name: load_file(again.output_dir / name) for name in finished}
    from safetensors.torch import load as load_bytes

    for name, data in finished.items():
        before = load_bytes(data)
        assert before.keys() == saved[name].keys() and all(torch.equal(before[key], saved[name][key]) for key in before)
