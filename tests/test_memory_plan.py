"""`togi estimate`: memory per device from a model's config.json alone, before anything loads.

The parameter counts come from the model built on the meta device with the recipe's method applied, so they are
the ones training sees. The parts then follow the recipe: precision, method, sharding over devices, offload,
checkpointing and batch. The comparison with measured peaks is in benchmarks/memory_estimate.py (RESULTS.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from togi.config import load_config
from togi.train.memory_plan import GB, estimate, largest_batch, model_shape, parse_memory, recipe_setup

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
SHAPES = Path(__file__).resolve().parents[1] / "examples" / "shapes"


def recipe(model: Path | str, *overrides: str):
    return load_config(None, [f"model={model}", "data.train_file=train.jsonl", *overrides])


def test_the_counts_are_those_of_the_model_training_builds(tiny_model_dir, tokenizer):
    import peft
    from transformers import AutoModelForCausalLM

    from togi.train.methods import lora_config

    shape = model_shape(recipe(tiny_model_dir, "method=lora", "lora.r=4"))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert shape.parameters == sum(parameter.numel() for parameter in model.parameters())
    assert (shape.hidden, shape.intermediate, shape.key_value, shape.blocks, shape.vocabulary) == (64, 128, 32, 2, len(tokenizer))
    assert shape.quantizable == 2 * (64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128)  # q, o; k, v; gate, up, down
    peft_model = peft.get_peft_model(model, lora_config(model, recipe(tiny_model_dir, "method=lora", "lora.r=4"), "CAUSAL_LM"))
    assert shape.trainable == sum(parameter.numel() for parameter in peft_model.parameters() if parameter.requires_grad)
    assert model_shape(recipe(tiny_model_dir, "method=full")).trainable == shape.parameters
    frozen = model_shape(recipe(tiny_model_dir, "method=freeze", "freeze.trainable_blocks=1"))
    assert frozen.trainable == shape.quantizable // 2 + 2 * 64  # one block's linear layers and its two norms


def test_a_config_json_alone_is_enough_and_the_8b_methods_fall_in_the_seeds_order():
    shape_8b = model_shape(recipe(SHAPES / "llama-3.1-8b"))  # no tokenizer, no weights
    assert shape_8b.parameters == pytest.approx(8.03e9, rel=1e-3)
    config = recipe(SHAPES / "llama-3.1-8b", "training.batch_size=1", "data.max_length=2048")
    setup = recipe_setup(config, "cuda", 1)
    assert setup.precision == "bf16" and setup.checkpointing  # a GPU's defaults
    totals = {}
    for method in ("full", "lora", "qlora"):
        shape = model_shape(config, method="lora" if method == "qlora" else method)
        totals[method] = estimate(shape, replace(setup, method=method)).total / GB
    # Seed 003: full ~60 GB, LoRA ~20 GB, QLoRA ~8 GB for Llama 3.1 8B.
    assert totals["full"] > 3 * totals["lora"] > 6 * totals["qlora"] / 2
    assert totals["lora"] == pytest.approx(20, rel=0.15) and totals["full"] == pytest.approx(60, rel=0.15)
    # bf16 base weights, and PEFT's float32 adapter weights beside them
    assert estimate(shape_8b, setup).weights == pytest.approx(2 * shape_8b.parameters + 2 * shape_8b.trainable)


def test_sharding_offload_and_checkpointing_move_memory_where_they_should():
    config = recipe(SHAPES / "llama-3.2-1b", "method=full", "training.batch_size=2", "data.max_length=4096")
    shape = model_shape(config)
    one = recipe_setup(config, "cuda", 1)
    alone = estimate(shape, one)
    ddp = estimate(shape, replace(one, devices=2, strategy="ddp"))
    fsdp = estimate(shape, replace(one, devices=2, strategy="fsdp"))
    zero2 = estimate(shape, replace(one, devices=2, strategy="deepspeed", zero_stage=2))
    offloaded = estimate(shape, replace(one, devices=2, strategy="deepspeed", zero_stage=3, offload_optimizer=True, offload_parameters=True))
    assert ddp.weights == alone.weights and ddp.gradients == 2 * alone.gradients  # every device holds all, and its gradient buckets
    assert fsdp.weights == alone.weights / 2 and fsdp.optimizer == alone.optimizer / 2
    assert zero2.weights == alone.weights and zero2.optimizer == alone.optimizer / 2
    assert offloaded.optimizer == 0 and offloaded.weights == 0
    assert estimate(shape, replace(one, checkpointing=False)).activations > 5 * alone.activations  # 16 blocks kept, not 1 + inputs
    assert alone.activations == estimate(shape, replace(one, batch_size=1)).activations * 2


def test_the_largest_batch_is_the_last_that_fits():
    config = recipe(SHAPES / "llama-3.1-8b", "data.max_length=4096")
    shape, setup = model_shape(config), recipe_setup(config, "cuda", 1)
    batch = largest_batch(shape, setup, 40 * GB)
    assert batch >= 1
    assert estimate(shape, replace(setup, batch_size=batch)).total <= 40 * GB < estimate(shape, replace(setup, batch_size=batch + 1)).total
    assert largest_batch(shape, setup, 10 * GB) == 0  # the bf16 weights alone are 16 GB


def test_a_cpu_estimate_keeps_weights_in_float32_and_counts_passes_of_bounded_tokens(tiny_model_dir):
    config = recipe(tiny_model_dir, "training.precision=fp32", "training.batch_size=8", "data.max_length=512")
    setup = recipe_setup(config, "cpu", 1)
    assert setup.pass_tokens == 512 and not setup.checkpointing
    whole = recipe_setup(recipe(tiny_model_dir, "training.precision=fp32", "training.batch_size=8", "data.max_length=512",
                                "training.micro_batch_tokens=null"), "cpu", 1)
    shape = model_shape(config)
    assert estimate(shape, whole).activations == 8 * estimate(shape, setup).activations
    assert estimate(shape, setup).weights == 4 * shape.parameters


def test_togi_estimate_says_what_fits_and_the_cheapest_change_when_nothing_does(cli):
    result = cli("estimate", "--model", SHAPES / "llama-3.1-8b", "--method", "full", "--gpu-memory", "24GB", "--set", "training.batch_size=1")
    assert result.exit_code == 0, result.output
    assert "does not fit" in result.output and "cheapest that fits: method: lora" in result.output
    for method in ("full", "lora", "qlora"):
        assert f"│ {method}" in result.output
    fits = cli("estimate", "--model", SHAPES / "llama-3.1-8b", "--gpus", "2", "--gpu-memory", "80GB", "--set", "distributed.strategy=fsdp")
    assert "✓ fits" in fits.output and "fsdp" in fits.output
    bad = cli("estimate", "--model", SHAPES / "llama-3.1-8b", "--gpu-memory", "lots")
    assert bad.exit_code == 2 and "--gpu-memory" in bad.output and "80GB" in bad.output
    classifier = cli("estimate", "--set", "task=classification")
    assert classifier.exit_code == 2 and "task classification" in classifier.output


def test_memory_sizes_read_as_people_write_them():
    assert parse_memory("80GB") == 80e9 and parse_memory("24GiB") == 24 * 2**30 and parse_memory("512 MB") == 512e6
    for text in ("lots", "-3GB", "80PB"):
        with pytest.raises(ValueError):
            parse_memory(text)
