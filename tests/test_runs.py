"""The run directory has one owner, `togi.runs`: `Run.open(path)` gives a run's config, record, metrics,
checkpoints and trained model to evaluate, export and serve, and no other module spells out its layout."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from togi.config import load_config
from togi.runs import Run, RunDirectoryError
from togi.train import train

from conftest import REPO, distinct_chats, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    directory = tmp_path_factory.mktemp("lora-run")
    data = write_jsonl(directory / "train.jsonl", distinct_chats(16))
    config = load_config(None, [f"model={tiny_model_dir}", f"data.train_file={data}", f"output_dir={directory / 'run'}", "training.max_steps=3",
                                "training.batch_size=4", "training.gradient_accumulation=1", "training.learning_rate=5e-2",
                                "monitoring.save_every=1", "monitoring.eval_every=1", "monitoring.keep_checkpoints=2", "monitoring.samples=0"])
    return train(config, log=lambda message: None).run_dir


def test_a_directory_that_is_no_run_is_named_with_a_hint(tmp_path):
    with pytest.raises(RunDirectoryError) as refused:
        Run.open(tmp_path)
    assert refused.value.message == f"{tmp_path} is not a togi run directory (no config.yaml)"
    assert "togi train" in refused.value.hint
    assert not Run.is_run(tmp_path)


def test_a_finished_run_gives_its_config_record_metrics_and_checkpoints(lora_run):
    run = Run.open(lora_run)
    assert Run.is_run(lora_run) and run.config.method == "lora"
    assert run.info["status"] == "succeeded" and run.info["result"]["steps"] == 3
    assert [record["step"] for record in run.metrics() if "train_loss" in record] == [1, 2, 3]
    assert [checkpoint.name for checkpoint in run.checkpoints()] == ["checkpoint-2", "checkpoint-3"]  # the last two kept
    assert run.last_checkpoint() == run.checkpoints_dir / "checkpoint-3"
    assert run.output_dir == run.adapter_dir and (run.output_dir / "adapter_config.json").is_file()
    assert run.plot_path.is_file() and run.split_path("train").is_file() and run.card_path.is_file()


def test_the_trained_model_answers_as_plain_peft_loads_it_merged_or_not(lora_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), lora_run / "adapter").eval()
    unmerged, tokenizer = Run.open(lora_run).load_trained_model()
    merged, _ = Run.open(lora_run).load_trained_model(merge=True)
    ids = tokenizer("返品の送料は誰が負担しますか？", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(input_ids=ids).logits
        assert torch.equal(unmerged(input_ids=ids).logits, expected)
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert isinstance(unmerged, PeftModel) and not isinstance(merged, PeftModel)
    with torch.no_grad(), unmerged.disable_adapter():  # the base model is the same weights with the adapter off
        assert torch.equal(unmerged(input_ids=ids).logits, Run.open(lora_run).load_base_model()(input_ids=ids).logits)


def test_a_run_without_its_result_or_with_an_unmergeable_adapter_says_so(tmp_path, tiny_model_dir):
    unfinished = Run(tmp_path / "unfinished")
    unfinished.path.mkdir()
    unfinished.write_config(load_config(None, [f"model={tiny_model_dir}", "data.train_file=x.jsonl"]))
    unfinished.write_info(status="running")
    with pytest.raises(RunDirectoryError, match=r"has no trained adapter/ yet \(status: running\)"):
        unfinished.load_trained_model()

    prompt_tuned = Run(tmp_path / "prompt-tuned")
    prompt_tuned.adapter_dir.mkdir(parents=True)
    prompt_tuned.write_config(load_config(None, [f"model={tiny_model_dir}", "data.train_file=x.jsonl", "method=prompt_tuning"]))
    with pytest.raises(RunDirectoryError, match="prompt_tuning adapters cannot be merged") as refused:
        prompt_tuned.load_trained_model(merge=True)
    assert "--to adapter" in refused.value.hint


def test_reading_runs_imports_neither_torch_nor_training_code():
    # togi.train.result (RunResult, TrainingFailed) comes with the package root's API: plain classes, no training code.
    script = ("import sys, togi.runs; print(sorted(m for m in sys.modules if m in ('torch', 'transformers', 'trl', 'peft') "
              "or m.startswith('togi.train.') and m != 'togi.train.result'))")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"


def test_no_other_module_spells_out_the_run_directory_layout():
    layout = re.compile(r"""["'](config\.yaml|run\.json|metrics\.jsonl|stage_metrics\.jsonl|loss\.png|samples\.jsonl)["']""")
    package = REPO / "src" / "togi"
    spelled = [f"{path.relative_to(package)}:{number}" for path in package.rglob("*.py") if path.name != "runs.py"
               for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if layout.search(line)]
    assert spelled == []
