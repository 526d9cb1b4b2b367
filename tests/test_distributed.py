"""Training on several processes: `togi train --nproc-per-node 2` on this CPU (gloo), against one process.

The same recipe and the same global batch (2 processes x 2 examples, or 1 process x 4) train the same model: the
loss curves agree within float32 rounding, only rank 0 writes the run directory, and the adapter is one whole PEFT
adapter. A 2-process run killed with SIGKILL continues from its checkpoint, again on 2 processes, to the weights of a
run never interrupted. FSDP and DeepSpeed run on GPUs only (accelerate enables them for accelerator processes):
here their settings are checked and turned away before any process starts; their runs wait for a machine with GPUs.
"""

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

from togi.config import ConfigError, load_config
from togi.errors import TogiError
from togi.train.distributed import Processes, deepspeed_config, strategy_arguments, transformer_layer_classes
from togi.train.launch import Launch
from togi.train.runnable import Machine, check_runnable

from conftest import build_tiny_model, distinct_chats, write_jsonl

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
TWO_PROCESSES = Processes(rank=0, local_rank=0, world_size=2, local_world_size=2)


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "train.jsonl", distinct_chats(48))


def togi_train(model_dir: Path, train_file: Path, out: Path, *extra: str, processes: int = 1, batch: int = 4, steps: int = 8) -> list[str]:
    command = [sys.executable, "-m", "togi", "train", "--data", str(train_file), "--model", str(model_dir), "--output-dir", str(out),
               "--max-steps", str(steps), "--precision", "fp32", "--set", f"training.batch_size={batch}",
               "--set", "training.gradient_accumulation=1", "--set", "training.learning_rate=1e-2", "--set", "data.val_ratio=0",
               "--set", "monitoring.samples=0", "--set", "monitoring.log_every=1", *extra]
    return command + (["--nproc-per-node", str(processes)] if processes > 1 else [])


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(record["step"], record["train_loss"]) for record in records if "train_loss" in record]


def relative_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum((a[key] - b[key]).norm() ** 2 for key in a) ** 0.5 / sum(a[key].norm() ** 2 for key in a) ** 0.5)


def test_two_ddp_processes_train_the_model_one_process_trains(tmp_path, tiny_model_dir, train_file):
    """2 processes x 2 examples against 1 process x 4 examples. Before the optimizer has moved anything the loss is
    the same to float32 rounding: the same examples make each step's batch, and the loss is averaged over all of
    their tokens, not per process. After that, Adam moves every weight by about the learning rate whatever the size
    of its gradient, so gradients that are zero up to rounding move by the sign of their rounding: the curves drift
    apart by as much as one process's do when its batch of 4 is summed as 2 + 2 (gradient accumulation)."""
    subprocess.run(togi_train(tiny_model_dir, train_file, tmp_path / "one"), check=True, capture_output=True)
    subprocess.run(togi_train(tiny_model_dir, train_file, tmp_path / "split", "--set", "training.gradient_accumulation=2", batch=2),
                   check=True, capture_output=True)
    two = subprocess.run(togi_train(tiny_model_dir, train_file, tmp_path / "two", processes=2, batch=2), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("✓ succeeded") == 1 and two.stdout.count("data: 48 training") == 1  # rank 0 alone prints

    one, split, double = (train_losses(tmp_path / run) for run in ("one", "split", "two"))
    assert [step for step, _ in double] == list(range(1, 9))  # one record per step: rank 0 alone writes
    assert one[0][1] > one[-1][1] + 2  # it learns
    assert [loss for _, loss in double[:2]] == pytest.approx([loss for _, loss in one[:2]], rel=1e-6)
    rounding = max(abs(a - b) for (_, a), (_, b) in zip(one, split))
    assert 0 < max(abs(a - b) for (_, a), (_, b) in zip(one, double)) <= 2 * rounding
    info = json.loads((tmp_path / "two" / "run.json").read_text())
    assert info["status"] == "succeeded" and info["processes"] == {"world_size": 2, "nodes": 1, "strategy": "ddp"}

    # One whole adapter, as PEFT saves it, as near to the single process's as the accumulated one is.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "two" / "adapter"
    assert sorted(path.name for path in adapter.glob("adapter_*")) == ["adapter_config.json", "adapter_model.safetensors"]
    weights = {run: load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("one", "split", "two")}
    assert weights["one"].keys() == weights["two"].keys()
    assert relative_distance(weights["one"], weights["two"]) <= 2 * relative_distance(weights["one"], weights["split"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    loaded = {name: parameter for name, parameter in model.named_parameters() if "lora_" in name}
    assert len(loaded) == len(weights["two"]) and all(not parameter.requires_grad for parameter in loaded.values())


def test_a_two_process_run_killed_mid_run_resumes_on_two_processes_to_the_same_weights(tmp_path, tiny_model_dir, train_file):
    every_10 = ("--set", "monitoring.save_every=10")
    subprocess.run(togi_train(tiny_model_dir, train_file, tmp_path / "whole", *every_10, processes=2, batch=2, steps=60),
                   check=True, capture_output=True)
    killed = subprocess.Popen(togi_train(tiny_model_dir, train_file, tmp_path / "killed", *every_10, processes=2, batch=2, steps=60),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = tmp_path / "killed" / "checkpoints" / "checkpoint-10" / "trainer_state.json"
    deadline = time.time() + 300
    while not checkpoint.exists() and killed.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(killed.pid, signal.SIGKILL)  # the launcher; torchrun started each rank in a session of its own
    killed.wait()
    steps_at_kill = len(train_losses(tmp_path / "killed"))
    time.sleep(3)  # ranks left running would go on logging steps, and save the adapter
    assert len(train_losses(tmp_path / "killed")) == steps_at_kill, "the ranks outlived their launcher"
    assert not (tmp_path / "killed" / "adapter").exists(), "the run finished before it could be killed"

    resumed = subprocess.run([sys.executable, "-m", "togi", "train", "--resume", str(tmp_path / "killed"), "--nproc-per-node", "2"],
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout
    whole = load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors")
    again = load_file(tmp_path / "killed" / "adapter" / "adapter_model.safetensors")
    assert whole.keys() == again.keys() and all(torch.allclose(whole[key], again[key], atol=1e-6) for key in whole)
    assert train_losses(tmp_path / "killed")[-1] == pytest.approx(train_losses(tmp_path / "whole")[-1], rel=1e-5)


def test_two_nodes_meet_at_the_master_address_and_train_one_run(tmp_path, tiny_model_dir, train_file):
    """Two nodes of one process each, both on loopback: what two machines run, each with its --node-rank."""
    from test_serve import free_port

    port = str(free_port())
    nodes = ["--nnodes", "2", "--master-addr", "127.0.0.1", "--master-port", port]
    command = togi_train(tiny_model_dir, train_file, tmp_path / "run", processes=1, batch=2, steps=4) + ["--nproc-per-node", "1", *nodes]
    second = subprocess.Popen([*command, "--node-rank", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = subprocess.run([*command, "--node-rank", "0"], capture_output=True, text=True, timeout=300)
    second_out, _ = second.communicate(timeout=60)
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:]
    assert "✓ succeeded" in first.stdout and "✓ succeeded" not in second_out  # node 0's rank 0 reports
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["processes"] == {"world_size": 2, "nodes": 2, "strategy": "ddp"}
    assert [step for step, _ in train_losses(tmp_path / "run")] == [1, 2, 3, 4]


def test_fsdp_and_deepspeed_are_turned_away_on_a_machine_without_gpus_before_any_process_starts(tmp_path, tiny_model_dir, train_file, cli):
    cpu = Machine(cuda=False, installed=frozenset())
    for strategy in ("fsdp", "deepspeed"):
        config = load_config(None, [f"data.train_file={train_file}", f"distributed.strategy={strategy}"])
        check_runnable(config, cpu)  # one process ignores the section
        with pytest.raises(ConfigError) as error:
            check_runnable(config, cpu, processes=2)
        assert [issue.path for issue in error.value.issues] == ["distributed.strategy"]
        assert "ddp" in error.value.issues[0].hint
    gpu = Machine(cuda=True, installed=frozenset())
    with pytest.raises(ConfigError, match="deepspeed package is not installed"):
        check_runnable(load_config(None, [f"data.train_file={train_file}", "distributed.strategy=deepspeed"]), gpu, processes=2)

    result = cli("train", "--data", train_file, "--model", tiny_model_dir, "--output-dir", tmp_path / "run", "--nproc-per-node", "2",
                 "--set", "distributed.strategy=fsdp")
    assert result.exit_code == 2 and "distributed.strategy" in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("stage", ["dpo", "reward"])
def test_a_preference_stage_on_two_processes_starts_from_the_single_process_loss(tmp_path, tiny_model_dir, stage):
    from test_preference import pairs

    data = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 16))
    one = subprocess.run(togi_train(tiny_model_dir, data, tmp_path / "one", "--stage", stage, steps=3), capture_output=True, text=True)
    two = subprocess.run(togi_train(tiny_model_dir, data, tmp_path / "two", "--stage", stage, processes=2, batch=2, steps=3),
                         capture_output=True, text=True)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count(f"stage {stage} finished") == 1
    first = [train_losses(tmp_path / run)[0][1] for run in ("one", "two")]
    assert first[1] == pytest.approx(first[0], rel=1e-5)  # the same 4 pairs make the first step, averaged alike
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"]["world_size"] == 2
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").is_file()


def test_only_chat_training_trains_on_several_processes_and_not_rlhf(train_file, tmp_path):
    cpu = Machine(cuda=False, installed=frozenset())
    check_runnable(load_config(None, [f"data.train_file={train_file}", "stage=dpo"]), cpu, processes=2)
    rlhf = load_config(None, [f"data.train_file={train_file}", "stage=rlhf", "rlhf.reward_function=rewards:polite"])
    with pytest.raises(ConfigError) as error:
        check_runnable(rlhf, cpu, processes=2)
    assert error.value.issues[0].path == "stage" and "--nproc-per-node" in error.value.issues[0].hint
    with pytest.raises(ConfigError) as error:
        load_config(None, [f"data.train_file={train_file}", "task=classification", "distributed.strategy=ddp"])
    assert error.value.issues[0].path == "distributed"


def test_distributed_settings_are_checked_with_their_line(tmp_path, train_file):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data:\n  train_file: {train_file}\ndistributed:\n  strategy: ddp\n  fsdp:\n    cpu_offload: true\n")
    with pytest.raises(ConfigError) as error:
        load_config(recipe)
    issue = error.value.issues[0]
    assert (issue.path, issue.line) == ("distributed.fsdp", 5) and "strategy: fsdp" in issue.hint
    with pytest.raises(ConfigError, match="needs zero_stage 3"):
        load_config(None, [f"data.train_file={train_file}", "distributed.strategy=deepspeed", "distributed.deepspeed.offload_parameters=true"])
    with pytest.raises(ConfigError, match="FSDP takes only its own"):
        load_config(None, [f"data.train_file={train_file}", "distributed.strategy=fsdp", "distributed.fsdp.activation_checkpointing=true",
                           "training.gradient_checkpointing=true"])
    # A run directory's recipe holds every section at its values: it reads back as it was written.
    config = load_config(None, [f"data.train_file={train_file}"])
    (tmp_path / "again.yaml").write_text(config.to_yaml())
    assert load_config(tmp_path / "again.yaml").distributed == config.distributed


def test_the_strategies_become_the_trainer_arguments_transformers_reads(tmp_path, tokenizer, train_file):
    from transformers import TrainingArguments

    model = build_tiny_model(tokenizer)
    assert transformer_layer_classes(model) == ["LlamaDecoderLayer"]
    fsdp = load_config(None, [f"data.train_file={train_file}", "distributed.strategy=fsdp", "distributed.fsdp.activation_checkpointing=true"])
    arguments = strategy_arguments(fsdp, TWO_PROCESSES, "cuda", "bf16", tmp_path, transformer_layer_classes(model))
    assert arguments["fsdp_config"]["version"] == 2 and arguments["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert arguments["fsdp_config"]["state_dict_type"] == "FULL_STATE_DICT"  # whole weights saved, no shards to stitch
    assert arguments["ddp_backend"] == "nccl"
    parsed = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **{k: v for k, v in arguments.items() if k != "ddp_backend"})
    assert parsed.fsdp and parsed.fsdp_config["activation_checkpointing"] is True

    assert strategy_arguments(fsdp, Processes(), "cpu", "fp32", tmp_path, []) == {}  # one process: no strategy
    assert strategy_arguments(load_config(None, [f"data.train_file={train_file}"]), TWO_PROCESSES, "cpu", "fp32", tmp_path, [])["ddp_backend"] == "gloo"

    zero3 = load_config(None, [f"data.train_file={train_file}", "distributed.strategy=deepspeed", "distributed.deepspeed.zero_stage=3",
                               "distributed.deepspeed.offload_parameters=true", "distributed.deepspeed.offload_optimizer=true"])
    arguments = strategy_arguments(zero3, TWO_PROCESSES, "cuda", "bf16", tmp_path, [])
    written = json.loads(Path(arguments["deepspeed"]).read_text())
    assert Path(arguments["deepspeed"]).parent == tmp_path and written == deepspeed_config(zero3.distributed, "bf16")
    zero = written["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True and written["bf16"] == {"enabled": True}
    assert written["train_micro_batch_size_per_gpu"] == "auto"  # transformers fills it from the recipe


def test_the_launcher_checks_the_nodes_before_starting(tmp_path):
    assert Launch(2).torchrun_arguments() == ["--nproc-per-node=2", "--standalone"]
    assert Launch(8, nnodes=2, node_rank=1, master_addr="10.0.0.1").torchrun_arguments() == [
        "--nproc-per-node=8", "--nnodes=2", "--node-rank=1", "--master-addr=10.0.0.1", "--master-port=29500"]
    for launch, problem in ((Launch(2, nnodes=2), "--master-addr"), (Launch(2, nnodes=2, node_rank=2, master_addr="h"), "--node-rank 2"),
                            (Launch(0), "at least one process")):
        with pytest.raises(TogiError, match=problem):
            launch.check()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="FSDP runs on GPUs only (accelerate enables it for accelerator processes); "
                    "this machine has fewer than 2")
def test_two_fsdp_processes_train_the_model_one_process_trains(tmp_path, tiny_model_dir, train_file):
    subprocess.run(togi_train(tiny_model_dir, train_file, tmp_path / "one"), check=True, capture_output=True)
    subprocess.run(togi_train(tiny_model_dir, train_file, tmp_path / "two", "--set", "distributed.strategy=fsdp", processes=2, batch=2),
                   check=True, capture_output=True)
    for (_, single), (_, sharded) in zip(train_losses(tmp_path / "one"), train_losses(tmp_path / "two")):
        assert sharded == pytest.approx(single, rel=1e-3)
    one, two = (load_file(tmp_path / run / "adapter" / "adapter_model.safetensors") for run in ("one", "two"))
    assert one.keys() == two.keys()


def test_the_server_runs_a_job_on_the_processes_it_asks_for_from_the_worker_slots(tmp_path, tiny_model_dir, train_file):
    """The openai client asks for 2 processes with extra_body (togi's own field); `togi serve --workers 2` has 2 slots,
    so a second job waits until the first has given them back, and a job asking for 3 is refused at once."""
    openai = pytest.importorskip("openai")
    from test_serve import Server, togi, upload, wait_for

    server = Server(tmp_path / "data", tiny_model_dir, "--workers", "2").start()
    try:
        key = togi("serve", "keys", "create", "--org", "acme", "--data-dir", server.data_dir).stdout.strip()
        client = server.client(key)
        training = upload(client, write_jsonl(tmp_path / "shop.jsonl", distinct_chats(24)))
        hyper = {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 2}}}}
        with pytest.raises(openai.BadRequestError) as refused:
            client.fine_tuning.jobs.create(model="tiny", training_file=training.id, extra_body={"processes": 3}, **hyper)
        assert refused.value.body["param"] == "processes" and "--workers" in refused.value.body["message"]

        wide = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, extra_body={"processes": 2}, **hyper)
        narrow = client.fine_tuning.jobs.create(model="tiny", training_file=training.id, **hyper)
        wide, narrow = wait_for(client, wide.id, timeout=300), wait_for(client, narrow.id, timeout=300)
        assert wide.status == narrow.status == "succeeded", (wide.error, narrow.error)
        run_info = json.loads((server.data_dir / "jobs" / wide.id / "run" / "run.json").read_text())
        assert run_info["processes"]["world_size"] == 2
        narrow_started = next(event.created_at for event in client.fine_tuning.jobs.list_events(narrow.id, limit=100)
                              if event.message == "Fine-tuning job started")
        assert narrow_started >= wide.finished_at  # its one slot was free only when the 2-process job ended
        steps = [event for event in client.fine_tuning.jobs.list_events(wide.id, limit=100) if event.type == "metrics"]
        assert steps and client.chat.completions.create(model=wide.fine_tuned_model, messages=[{"role": "user", "content": "在庫は？"}],
                                                        max_tokens=4).choices[0].message.content is not None
    finally:
        server.stop()
