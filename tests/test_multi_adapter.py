"""Several tasks on one base: two LoRA runs on the tiny model (the second with `togi train --base-of` the first),
exported as one base and named adapters that PEFT loads and switches, and served side by side by one `togi serve`,
each model id answering as its run's adapter does in PEFT."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import chat, write_jsonl
from test_serve import Server, togi

COLORS = {"red": "赤色です。", "blue": "青色です。"}
QUESTION = "この商品の色を教えてください。"


def train_task(folder: Path, name: str, *extra: str, out: Path | None = None) -> Path:
    """A LoRA run that answers every question with its color."""
    data = write_jsonl(folder / f"{name}.jsonl", [chat(f"質問{i}: {QUESTION}", COLORS[name]) for i in range(16)])
    run_dir = out or folder / name
    subprocess.run([sys.executable, "-m", "togi", "train", "--data", str(data), "--output-dir", str(run_dir), "--max-steps", "24",
                    "--set", "training.learning_rate=3e-2", "--set", "training.gradient_accumulation=1", "--set", "data.val_ratio=0",
                    "--set", "monitoring.samples=0", "--set", "lora.dropout=0", *extra], check=True, capture_output=True, timeout=300)
    return run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("tasks")
    red = train_task(folder, "red", "--model", str(tiny_model_dir))
    blue = train_task(folder, "blue", "--base-of", str(red))
    return {"red": red, "blue": blue, "folder": folder}


def greedy(model, tokenizer, tokens: int = 6) -> str:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    return tokenizer.decode(output[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).rstrip("\ufffd")


def peft_answers(base_dir: Path, adapters: dict[str, Path]) -> dict[str, str]:
    """Each adapter's greedy answer, loaded into one PeftModel and switched with set_adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(next(iter(adapters.values())))
    names = list(adapters)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapters[names[0]], adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(adapters[name], adapter_name=name)
    answers = {}
    for name in names:
        model.set_adapter(name)
        answers[name] = greedy(model, tokenizer)
    return answers


def test_a_second_task_trains_on_the_first_runs_base(runs, tiny_model_dir):
    config = json.loads((runs["blue"] / "run.json").read_text())
    assert config["model"] == str(tiny_model_dir)


def test_the_export_holds_one_base_and_named_adapters_that_peft_loads_and_switches(runs, tiny_model_dir, tmp_path):
    out = tmp_path / "tasks"
    result = togi("export", f"red={runs['red']}", f"blue={runs['blue']}", "--to", "multi-adapter", "--out", out, "--combine", "cat")
    assert "✓ exported one base and the adapters red, blue, combined" in result.stdout
    manifest = json.loads((out / "adapters.json").read_text())
    assert manifest["base"] == "base" and list(manifest["adapters"]) == ["red", "blue", "combined"]
    assert manifest["adapters"]["combined"]["combination"] == "cat"
    assert sorted(path.name for path in (out / "adapters").iterdir()) == ["blue", "combined", "red"]
    assert list((out / "base").glob("*.safetensors")) and (out / "base" / "tokenizer_config.json").is_file()
    from_runs = peft_answers(tiny_model_dir, {"red": runs["red"] / "adapter", "blue": runs["blue"] / "adapter"})
    exported = peft_answers(out / "base", {name: out / "adapters" / name for name in ("red", "blue", "combined")})
    assert from_runs["red"] != from_runs["blue"], from_runs  # the two tasks answer differently: switching matters
    assert exported["red"] == from_runs["red"] and exported["blue"] == from_runs["blue"]
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()

    tests = {name: write_jsonl(tmp_path / f"{name}-test.jsonl", [chat(f"問{i}: {QUESTION}", answer) for i in range(3)])
             for name, answer in COLORS.items()}
    table = togi("eval", "adapters", out, "--test", f"red={tests['red']}", "--test", f"blue={tests['blue']}").stdout
    assert "each model on each task's test file" in table
    scores = {(row["task"], row["model"]): row["metrics"] for row in json.loads((out / "eval" / "adapters.json").read_text())}
    assert set(scores) == {(task, model) for task in ("red", "blue") for model in ("base", "red", "blue", "combined")}
    loss = {key: value["mean_token_loss"] for key, value in scores.items()}
    for task, other in (("red", "blue"), ("blue", "red")):  # each task's own adapter fits its test file best
        assert loss[(task, task)] < loss[(task, other)] and loss[(task, task)] < loss[(task, "base")]


def test_one_server_serves_each_adapter_as_its_own_model_on_one_loaded_base(runs, tiny_model_dir, tmp_path):
    from_runs = peft_answers(tiny_model_dir, {"red": runs["red"] / "adapter", "blue": runs["blue"] / "adapter"})
    server = Server(tmp_path / "data", tiny_model_dir, "--model", f"red={runs['red']}", "--model", f"blue={runs['blue']}").start()
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", server.data_dir).stdout.strip()
        client = server.client(key)
        assert {"tiny", "red", "blue"} <= {model.id for model in client.models.list().data}
        assert len([model for model in client.models.list().data if model.id.endswith("-base")]) == 0  # both on the served tiny base
        for name in ("red", "blue", "red"):  # back and forth on one base
            answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=6, temperature=0)
            assert answer.choices[0].message.content == from_runs[name], name
        log = (tmp_path / f"server-{server.port}.log").read_text()
        assert "red: an adapter on tiny" in log and "blue: an adapter on tiny" in log
    finally:
        server.stop()


def test_adapters_from_an_export_folder_share_its_base(runs, tiny_model_dir, tmp_path):
    out = tmp_path / "tasks"
    togi("export", f"red={runs['red']}", f"blue={runs['blue']}", "--to", "multi-adapter", "--out", out)
    from_runs = peft_answers(tiny_model_dir, {"red": runs["red"] / "adapter", "blue": runs["blue"] / "adapter"})
    server = Server(tmp_path / "data", tiny_model_dir, "--model", f"red={out / 'adapters' / 'red'}", "--model", f"blue={out / 'adapters' / 'blue'}").start()
    try:
        client = server.client(togi("serve", "keys", "create", "--org", "acme", "--data-dir", server.data_dir).stdout.strip())
        ids = {model.id for model in client.models.list().data}
        assert "red-base" in ids and "blue-base" not in ids  # the export's base, loaded once for both
        for name in ("blue", "red"):
            answer = client.chat.completions.create(model=name, messages=[{"role": "user", "content": QUESTION}], max_tokens=6, temperature=0)
            assert answer.choices[0].message.content == from_runs[name], name
    finally:
        server.stop()


def test_runs_on_different_bases_or_without_adapters_are_refused_with_the_reason(runs, tmp_path, tokenizer):
    from conftest import build_tiny_model

    other_base = tmp_path / "other-base"
    build_tiny_model(tokenizer, seed=1).save_pretrained(other_base)
    tokenizer.save_pretrained(other_base)
    stranger = train_task(tmp_path, "red", "--model", str(other_base), out=tmp_path / "stranger")
    refused = togi("export", f"red={runs['red']}", f"other={stranger}", "--to", "multi-adapter", "--out", tmp_path / "x", check=False)
    assert refused.returncode == 2 and "adapters share one base only when they were trained on the same one" in refused.stderr
    assert "--base-of" in refused.stderr and not (tmp_path / "x").exists()
    single = togi("export", str(runs["red"]), str(runs["blue"]), "--to", "merged", check=False)
    assert single.returncode == 2 and "--to merged exports one run; 2 were given" in single.stderr
    linear = togi("export", f"red={runs['red']}", f"blue={runs['blue']}", "--to", "multi-adapter", "--out", tmp_path / "y",
                  "--combine", "ties", check=False)
    assert linear.returncode == 2 and "needs --density" in linear.stderr
    served = togi("serve", "--data-dir", tmp_path / "d", "--model", f"red={runs['red']}", "--model", "red=/tmp", check=False)
    assert served.returncode == 2 and "--model red is given twice" in served.stderr and "Traceback" not in served.stderr


def test_onnx_of_the_export_is_one_graph_whose_adapters_onnxruntime_switches_per_run(runs, tiny_model_dir, tmp_path):
    pytest.importorskip("onnxruntime", reason="the ONNX extra is not installed (make setup-dev installs it)")
    import numpy as np
    import onnxruntime
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "tasks"
    togi("export", f"red={runs['red']}", f"blue={runs['blue']}", "--to", "multi-adapter", "--out", out, "--combine", "cat")  # cat: rank 8
    result = togi("export", out, "--to", "onnx", "--out", tmp_path / "onnx")
    assert "✓ exported ONNX with switchable adapters" in result.stdout
    onnx_dir = tmp_path / "onnx"
    assert sorted(path.name for path in (onnx_dir / "adapters").iterdir()) == ["blue.onnx_adapter", "combined.onnx_adapter", "red.onnx_adapter"]
    tokenizer = AutoTokenizer.from_pretrained(onnx_dir)
    ids = tokenizer([QUESTION], return_tensors="pt", add_special_tokens=False)
    session = onnxruntime.InferenceSession(str(onnx_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapters" / "red", adapter_name="red").eval()
    for name in ("blue", "combined"):
        model.load_adapter(out / "adapters" / name, adapter_name=name)
    feed = {"input_ids": ids["input_ids"].numpy(), "attention_mask": ids["attention_mask"].numpy()}
    answers = {}
    for name in ("red", "blue", "combined", None):  # None: no adapter active, the base model
        options = onnxruntime.RunOptions()
        if name:
            adapter = onnxruntime.LoraAdapter()
            adapter.Load(str(onnx_dir / "adapters" / f"{name}.onnx_adapter"))
            options.add_active_adapter(adapter)
            model.set_adapter(name)
        with torch.no_grad():
            if name:
                expected = model(**ids).logits.numpy()
            else:
                with model.disable_adapter():
                    expected = model(**ids).logits.numpy()
        actual = session.run(["logits"], feed, options)[0]
        assert np.abs(actual - expected).max() < 1e-3, name
        answers[name] = actual
    assert np.abs(answers["red"] - answers["blue"]).max() > 0.1 and np.abs(answers["red"] - answers[None]).max() > 0.1  # it switches
