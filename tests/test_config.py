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


def test_reading_a_recipe_does_not_depend_on_the_machine_training_does(tmp_path):
    from togi.train.runnable import Machine, check_runnable

    config = load_config(None, [f"data.train_file={tmp_path}", "method=qlora", "monitoring.report_to=wandb"])  # reads on any machine
    with pytest.raises(ConfigError) as caught:
        check_runnable(config, Machine(cuda=False, installed=frozenset()))
    found = issues(caught.value)
    assert "needs a CUDA GPU" in found["method"][0] and "use method: lora" in found["method"][0]
    assert "pip install wandb" in found["monitoring.report_to"][0]
    check_runnable(config, Machine(cuda=True, installed=frozenset({"wandb"})))  # a GPU machine with wandb trains it


def test_training_refuses_what_this_machine_cannot_run_before_loading(cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU: qlora runs here")
    result = cli("train", "--data", tmp_path / "x.jsonl", "--method", "qlora", "--output-dir", tmp_path / "run")
    assert result.exit_code == 2 and "method: qlora quantizes" in result.stderr and "QLoRA runs on a CUDA GPU only" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_recipe_is_one_of_three_kinds_chosen_by_task_and_stage(tmp_path):
    from togi.config import ChatConfig, ClassificationConfig, PreferenceConfig

    base = [f"data.train_file={tmp_path}"]
    assert type(load_config(None, base)) is ChatConfig
    assert type(load_config(None, base + ["stage=dpo"])) is PreferenceConfig
    classifier = load_config(None, base + ["task=classification", "classification.freeze_backbone=true"])
    assert type(classifier) is ClassificationConfig and (classifier.model, classifier.method) == ("all-MiniLM-L6-v2", "freeze")
    assert not hasattr(load_config(None, base), "classification")  # a chat recipe has no classifier settings to misread


def test_a_section_of_another_kind_of_recipe_says_which_kind_it_belongs_to(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("data:\n  train_file: x.jsonl\nclassification:\n  label_pattern: 'ラベル: (\\S+)'\npreference:\n  beta: 0.2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(recipe)
    found = issues(caught.value)
    assert found["classification"][1] == 3 and "is for task: classification" in found["classification"][0]
    assert "add task: classification to the recipe, or drop the classification section" in found["classification"][0]
    assert found["preference"][1] == 5 and "a preference stage (stage: dpo" in found["preference"][0]


def test_cross_field_rules_name_their_field_with_a_hint(tmp_path):
    base = [f"data.train_file={tmp_path}"]
    cases = {
        ("stage=dpo", "method=prompt_tuning"): ("method", "stage dpo trains with full, freeze, lora, dora, qlora, not prompt_tuning"),
        ("stage=rlhf",): ("rlhf.reward_model", "stage rlhf needs a reward"),
        ("task=classification", "stage=kto"): ("stage", "task classification has no kto stage"),
        ("task=classification", "method=dora"): ("method", "task classification trains with full or lora, not dora"),
        ("stage=reward", "monitoring.eval_metric=rouge_l"): ("monitoring.eval_metric", "scores generated answers"),
    }
    for overrides, (path, message) in cases.items():
        with pytest.raises(ConfigError) as caught:
            load_config(None, base + list(overrides))
        [issue] = caught.value.issues
        assert (issue.path, issue.hint != "") == (path, True) and message in issue.message, (overrides, issue)


def test_run_directories_written_before_recipes_had_kinds_still_read(tmp_path):
    """Older runs saved every section at its defaults; evaluate, export and serve must still read them."""
    import yaml

    old = yaml.safe_load(load_config(None, [f"data.train_file={tmp_path}"]).to_yaml())
    old |= {"classification": {"freeze_backbone": False, "label_pattern": None}, "preference": {"beta": 0.1, "loss_type": "sigmoid"},
            "rlhf": {"reward_model": None, "reward_function": None, "num_generations": 4, "max_new_tokens": 32, "temperature": 1.0}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, allow_unicode=True), encoding="utf-8")
    assert load_config(tmp_path / "config.yaml").method == "lora"


def test_every_method_is_in_the_one_table_of_methods():
    from typing import get_args

    from togi.config import METHODS, Method, methods_where

    assert list(METHODS) == list(get_args(Method))
    assert methods_where(lora=True) == ("lora", "dora", "qlora") and methods_where(virtual_tokens=True) == ("prompt_tuning", "prefix_tuning")
    assert methods_where(needs_cuda=True) == ("qlora",)


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
