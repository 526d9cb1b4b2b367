"""Recipes are validated before anything loads; every problem names its field (and its line)."""

from __future__ import annotations

import pytest

from togi.config import ConfigError, load_config
from togi.models.resolve import resolve_model
from togi.train.methods import check_method_fits, lora_target_modules

from conftest import build_tiny_model


def issues(error: ConfigError) -> dict[str, tuple[str, int | None]]:
    return {issue.path: (issue.message + " | " + issue.hint, issue.line) for issue in error.issues}


def test_defaults_follow_the_seeds(tmp_path):
    config = load_config(None, [f"data.train_file={tmp_path / 'train.jsonl'}"])
    assert (config.method, config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.targets) == ("lora", 16, 32, 0.05, "full")
    training = config.training
    assert (training.epochs, training.batch_size, training.gradient_accumulation, training.scheduler, training.warmup_ratio,
            training.weight_decay) == (3, 4, 4, "cosine", 0.1, 0.01)
    assert config.learning_rate == 2e-4 and config.data.max_length == 2048
    assert load_config(None, [f"data.train_file={tmp_path}", "method=full"]).learning_rate == 2e-5


def test_unknown_keys_wrong_types_and_bad_values_name_field_and_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: smollm2-135m-instruct\n"
        "data:\n"
        "  train_file: train.jsonl\n"
        "lora:\n"
        "  rank: 8\n"
        "training:\n"
        "  batch_size: many\n"
        "  learning_rate: 3\n"
        "method: lora2\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(recipe)
    found = issues(caught.value)
    assert found["lora.rank"][1] == 5 and "did you mean 'lora.r'" in found["lora.rank"][0]
    assert found["training.batch_size"][1] == 7 and "valid integer" in found["training.batch_size"][0]
    assert found["training.learning_rate"][1] == 8 and "sane range" in found["training.learning_rate"][0]
    assert found["method"][1] == 9 and "'lora'" in found["method"][0]


def test_missing_data_says_how_to_give_it():
    with pytest.raises(ConfigError) as caught:
        load_config(None, [])
    assert "data" in issues(caught.value) and "--data" in issues(caught.value)["data"][0]


def test_invalid_yaml_names_the_line(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train_file: [unclosed\nmethod: lora\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(recipe)
    assert caught.value.issues[0].line is not None and "invalid YAML" in caught.value.issues[0].message


def test_overrides_are_read_as_yaml_and_win_over_the_recipe(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data: {train_file: a.jsonl}\nlora: {r: 8}\n", encoding="utf-8")
    config = load_config(recipe, ["lora.r=32", "lora.targets=[q_proj, v_proj]", "data.packing=false", "training.learning_rate=1e-4"])
    assert (config.lora.r, config.lora.targets, config.data.packing, config.learning_rate) == (32, ["q_proj", "v_proj"], False, 1e-4)
    with pytest.raises(ConfigError, match="path=value"):
        load_config(recipe, ["lora.r"])


def test_qlora_without_a_cuda_gpu_is_a_config_error(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: qlora is allowed here")
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"data.train_file={tmp_path}", "method=qlora"])
    assert "CUDA GPU" in issues(caught.value)["method"][0]


def test_lora_presets_are_found_from_the_model_not_hard_coded(tokenizer):
    model = build_tiny_model(tokenizer)
    assert lora_target_modules(model, "minimal") == ["q_proj", "v_proj"]
    assert lora_target_modules(model, "standard") == ["k_proj", "o_proj", "q_proj", "v_proj"]
    assert lora_target_modules(model, "full") == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def test_presets_on_a_gpt2_style_model_with_a_fused_attention_projection():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    assert lora_target_modules(model, "minimal") == ["c_attn"]
    assert lora_target_modules(model, "full") == ["c_attn", "c_fc", "c_proj"]


def test_method_settings_that_do_not_fit_the_model_fail_before_it_loads(tmp_path, tiny_model_dir):
    source = resolve_model(str(tiny_model_dir))
    base = [f"data.train_file={tmp_path}", f"model={tiny_model_dir}"]
    with pytest.raises(ConfigError) as caught:
        check_method_fits(load_config(None, base + ["lora.targets=[q_proj, query_key_value]"]), source)
    assert "query_key_value" in issues(caught.value)["lora.targets"][0] and "q_proj" in issues(caught.value)["lora.targets"][0]
    with pytest.raises(ConfigError) as caught:
        check_method_fits(load_config(None, base + ["method=freeze", "freeze.trainable_blocks=5"]), source)
    assert "only 2 blocks" in issues(caught.value)["freeze.trainable_blocks"][0]


def test_an_unquoted_label_pattern_read_as_a_mapping_says_to_quote_it(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train_file: x.jsonl\nmonitoring:\n  label_pattern: ラベル: (\\S+)\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(recipe)
    [issue] = caught.value.issues
    assert (issue.path, issue.line) == ("recipe", 4)
    assert "mapping values are not allowed" in issue.message and "must be quoted, e.g. label_pattern: 'ラベル: (\\S+)'" in issue.hint
    with pytest.raises(ConfigError) as caught:  # on the command line YAML reads it as {ラベル: (\S+)}
        load_config(None, ["data.train_file=x.jsonl", "monitoring.label_pattern=ラベル: (\\S+)"])
    [issue] = caught.value.issues
    assert issue.path == "monitoring.label_pattern" and "as a mapping" in issue.message
    assert "--set \"monitoring.label_pattern='ラベル: (\\S+)'\"" in issue.hint


def test_cli_reports_every_recipe_problem_and_exits_2(cli, tmp_path):
    result = cli("train", "--data", tmp_path / "x.jsonl", "--set", "lora.rr=3", "--set", "training.batch_size=0")
    assert result.exit_code == 2
    assert "lora.rr: unknown key" in result.stderr and "did you mean 'lora.r'" in result.stderr
    assert "training.batch_size" in result.stderr and "> 0" in result.stderr


def test_cli_train_refuses_data_with_errors_before_loading_the_model(cli, tmp_path, tiny_model_dir):
    from conftest import BROKEN

    result = cli("train", "--data", BROKEN / "openai_rules.jsonl", "--model", tiny_model_dir, "--output-dir", tmp_path / "run")
    assert result.exit_code == 1
    assert "unrecognized_role" in result.stderr and not (tmp_path / "run").exists()


def test_a_reporter_that_is_not_installed_is_a_config_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    with pytest.raises(ConfigError) as caught:
        load_config(None, [f"data.train_file={tmp_path}", "monitoring.report_to=wandb"])
    assert "pip install wandb" in issues(caught.value)["monitoring.report_to"][0]
