"""Training on several processes: which process this one is, and what the Trainer is told for the strategy.

Every process runs the same recipe (``togi train --nproc-per-node N`` starts them through torch's own launcher,
``launch.py``; a user may as well start ``togi train`` under ``torchrun`` or ``accelerate launch``). transformers'
Trainer, through accelerate, wraps the model (DDP, FSDP2 or DeepSpeed ZeRO) and gives each process its share of
every batch. What togi adds here:

- ``Processes``: this process's rank, read from the launcher's environment before anything starts;
- the process group started early (``join``), so that the processes agree on the run directory (rank 0's name)
  and wait for rank 0 to have written it before they go on;
- the TrainingArguments of ``distributed.strategy``, and DeepSpeed's configuration, written into the run directory.

Only the main process (rank 0) prints, writes the run directory, records metrics, draws the plot and samples; every
process joins the checkpoints and the final save, which transformers gathers into one whole adapter or model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from togi.config import DistributedSettings, TrainConfig
from togi.data.writer import atomic_write_text

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes, as torchrun and accelerate launch set it in the environment."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def current(cls) -> Processes:
        def number(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            return int(value) if value.isdigit() else default

        world_size = number("WORLD_SIZE", 1)
        return cls(rank=number("RANK", 0), local_rank=number("LOCAL_RANK", 0), world_size=world_size,
                   local_world_size=number("LOCAL_WORLD_SIZE", world_size))

    @property
    def several(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        """The process that prints and writes: rank 0 of the whole run."""
        return self.rank == 0

    @property
    def nodes(self) -> int:
        return max(1, self.world_size // max(1, self.local_world_size))

    def describe(self) -> str:
        return f"{self.world_size} processes" + (f" on {self.nodes} nodes" if self.nodes > 1 else "")


def join(device: str) -> None:
    """Start torch.distributed as the Trainer will (accelerate's PartialState: gloo on a CPU, nccl on CUDA), so that the
    processes can agree with each other before the Trainer exists."""
    from accelerate import PartialState

    from togi.process_tree import end_with_parent

    end_with_parent()  # torchrun starts each rank in a session of its own: a launcher killed at once must take them along
    PartialState(cpu=device == "cpu")


def wait_for_everyone() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def rank_zeros(value: T) -> T:
    """``value`` as the main process has it, on every process (a default run directory's name holds the time)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def strategy_arguments(config: TrainConfig, processes: Processes, device: str, precision: str, run_dir: Path,
                       layer_classes: list[str]) -> dict[str, Any]:
    """The TrainingArguments of ``distributed.strategy`` for a run on several processes (none for one process).
    ``layer_classes`` are the model's transformer block classes, the units FSDP shards and checkpoints by."""
    if not processes.several:
        return {}
    settings: DistributedSettings = getattr(config, "distributed", DistributedSettings())
    arguments: dict[str, Any] = {"ddp_backend": "gloo" if device == "cpu" else "nccl",
                                 # togi's methods leave no trainable parameter without a gradient: no search for unused ones
                                 "ddp_find_unused_parameters": False}
    if settings.strategy == "fsdp":
        fsdp = settings.fsdp
        arguments["fsdp"] = True
        arguments["fsdp_config"] = {
            "version": 2, "reshard_after_forward": True, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "transformer_layer_cls_to_wrap": layer_classes, "cpu_offload": fsdp.cpu_offload,
            "activation_checkpointing": fsdp.activation_checkpointing,
            "state_dict_type": "FULL_STATE_DICT",  # checkpoints and the final save whole, loadable by PEFT and transformers as they are
        }
        if fsdp.sharding == "hybrid" and processes.nodes > 1:
            from accelerate.parallelism_config import ParallelismConfig

            arguments["parallelism_config"] = ParallelismConfig(dp_replicate_size=processes.nodes, dp_shard_size=processes.local_world_size)
    elif settings.strategy == "deepspeed":
        path = run_dir / "deepspeed.json"
        atomic_write_text(path, json.dumps(deepspeed_config(settings, precision), indent=2) + "\n")
        arguments["deepspeed"] = str(path)
    return arguments


def deepspeed_config(settings: DistributedSettings, precision: str) -> dict[str, Any]:
    """DeepSpeed's configuration for distributed.deepspeed. "auto" values are filled in by transformers from the
    TrainingArguments (batch sizes, accumulation, clipping, learning rate), so the recipe stays the one source of them."""
    zero: dict[str, Any] = {"stage": settings.deepspeed.zero_stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if settings.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if settings.deepspeed.zero_stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto",
                    stage3_gather_16bit_weights_on_model_save=True)  # the final save is one whole model, not shards
        if settings.deepspeed.offload_parameters:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto", "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto", "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"}, "fp16": {"enabled": precision == "fp16"},
    }


def transformer_layer_classes(model: Any) -> list[str]:
    """The class names of a model's transformer blocks (transformers lists them as the modules never to split)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # under a PEFT wrapper
    return list(getattr(base, "_no_split_modules", None) or [])
