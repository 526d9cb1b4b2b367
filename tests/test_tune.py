"""`togi tune`: a hyper-parameter search on Optuna over a recipe, each trial an ordinary run of the tiny model.

On this tiny random Llama with LoRA, twelve steps move the eval loss from 7.06 to 6.8 at a learning rate of 1e-3,
to 4.5 at 1e-2 and to 2.4 at 3e-2: the higher the rate in that range, the better, which gives the search a
known good region."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import togi
from conftest import REPO, distinct_chats, write_jsonl
from togi.config import ConfigError, load_config
from togi.runs import Run
from togi.train.search_space import load_search_space, recipe_key
from togi.train.tune import Tuner, kept_value

optuna = pytest.importorskip("optuna")


def togi_tune(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "togi.cli.main", "tune", *map(str, args)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float = 300) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.fixture
def project(tmp_path, tiny_model_dir):
    """A recipe of 12 LoRA steps on the tiny model with an evaluation every 3 steps, and its data."""
    chats = distinct_chats(40)
    write_jsonl(tmp_path / "train.jsonl", chats[:32])
    write_jsonl(tmp_path / "val.jsonl", chats[32:])
    (tmp_path / "recipe.yaml").write_text(f"""model: {tiny_model_dir}
method: lora
data: {{train_file: train.jsonl, val_file: val.jsonl}}
lora: {{r: 4, alpha: 8, dropout: 0.0}}
training: {{max_steps: 12, batch_size: 4, gradient_accumulation: 1, learning_rate: 1.0e-3}}
monitoring: {{eval_every: 3, save_every: 6, samples: 2}}
""")
    return tmp_path


def write_space(folder: Path, text: str, name: str = "space.yaml") -> Path:
    (folder / name).write_text(text)
    return folder / name


LR_AND_RANK = """search_strategy: {type: random, num_trials: 6}   # the seed's own shape and names
search_space:
  learning_rate: {type: float, low: 1e-5, high: 5e-2, log: true}
  lora_r: {type: choice, values: [2, 8]}
"""


def study_trials(folder: Path, name: str = "recipe"):
    storage = f"sqlite:///{folder / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_a_two_parameter_search_finds_a_learning_rate_in_the_good_region_and_writes_a_recipe_that_trains(project, cli, monkeypatch):
    space = write_space(project, LR_AND_RANK)
    output = finished(togi_tune("recipe.yaml", "--space", space, "--seed", "3", cwd=project))
    study_dir = project / "runs" / "tune-recipe"
    trials = study_trials(study_dir)
    assert len(trials) == 6 and {trial.state.name for trial in trials} <= {"COMPLETE", "PRUNED"}
    complete = [trial for trial in trials if trial.state.name == "COMPLETE"]
    best = min(complete, key=lambda trial: trial.value)
    assert best.params["training.learning_rate"] >= 1e-3, [(t.params, t.value) for t in trials]
    assert best.params["training.learning_rate"] == max(trial.params["training.learning_rate"] for trial in complete)
    assert f"best: trial {best.number}, eval_loss {best.value:.4f}" in output
    for trial in trials:  # each trial is an ordinary run with its values in its recipe
        run = Run.open(trial.user_attrs["run_dir"])
        assert run.config.training.learning_rate == pytest.approx(trial.params["training.learning_rate"])
        assert run.config.lora.r == trial.params["lora.r"] and run.config.monitoring.samples == 0
        assert run.info["tune"]["trial"] == trial.number and run.info["tune"]["state"] == trial.state.name.lower()
    table = (study_dir / "trials.csv").read_text().splitlines()
    assert table[0].startswith("trial,state,value,training.learning_rate,lora.r") and len(table) == 7
    assert (study_dir / "study.png").stat().st_size > 10_000
    best_recipe = study_dir / "best-recipe.yaml"
    config = load_config(best_recipe)
    assert config.training.learning_rate == pytest.approx(best.params["training.learning_rate"]) and config.lora.r == best.params["lora.r"]
    assert config.monitoring.samples == 2  # the user's recipe, not the trials' shortcuts
    monkeypatch.chdir(project)
    result = cli("train", best_recipe, "--set", "training.max_steps=3", "--set", "monitoring.samples=0")
    assert result.exit_code == 0, result.output
    assert Run.is_run(project / config.output_dir)


def test_a_trial_that_goes_nowhere_is_pruned_at_its_first_evaluation(project, monkeypatch):
    space = write_space(project, "search_space:\n  learning_rate: {type: float, low: 1e-6, high: 1e-1, log: true}\n")
    study_dir = project / "study"
    storage = f"sqlite:///{study_dir / 'study.db'}"
    study_dir.mkdir()
    queued = optuna.create_study(study_name="recipe", storage=storage)
    for rate in (3e-2, 2e-2, 1e-6):  # two that learn, then one that barely moves
        queued.enqueue_trial({"training.learning_rate": rate})
    monkeypatch.chdir(project)
    result = togi.tune(project / "recipe.yaml", space, trials=3, study_dir=study_dir, storage=storage, log=lambda message: None)
    states = [row.state for row in result.trials]
    assert states == ["complete", "complete", "pruned"], result.trials
    slow = result.trials[2]
    assert slow.note == "pruned at step 3"
    run = Run.open(slow.run_dir)
    assert max(record["step"] for record in run.metrics()) == 3  # it stopped there; the others ran 12 steps
    assert run.info["tune"] == {"study": "recipe", "trial": 2, "state": "pruned", "step": 3}
    assert result.best.number == 0


def test_a_grid_runs_every_combination_once_under_the_hyperband_pruner(project):
    space = write_space(project, """search_strategy: {type: grid}
search_space:
  training.learning_rate: {type: choice, values: [1.0e-6, 3.0e-2]}
  lora.r: {type: int, low: 2, high: 4, step: 2}
""")
    output = finished(togi_tune("recipe.yaml", "--space", space, "--pruner", "hyperband", "--seed", "0", cwd=project))
    assert "4 trials, minimize eval_loss, sampler grid, pruner hyperband" in output  # the grid's size: 2 x 2
    trials = study_trials(project / "runs" / "tune-recipe")
    assert sorted((t.params["training.learning_rate"], t.params["lora.r"]) for t in trials) == [(1e-6, 2), (1e-6, 4), (3e-2, 2), (3e-2, 4)]
    assert {trial.state.name for trial in trials} <= {"COMPLETE", "PRUNED"}


def test_two_processes_sharing_one_sqlite_study_never_run_the_same_trial(project):
    space = write_space(project, LR_AND_RANK.replace("num_trials: 6", "num_trials: 8"))
    recipe = project / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 12", "max_steps: 24"))  # trials long enough to overlap
    first = togi_tune("recipe.yaml", "--space", space, "--seed", "1", cwd=project)
    second = togi_tune("recipe.yaml", "--space", space, "--seed", "2", cwd=project)
    outputs = [finished(first), finished(second)]
    trials = study_trials(project / "runs" / "tune-recipe")
    counted = [trial for trial in trials if trial.state.name in ("COMPLETE", "PRUNED")]
    assert 8 <= len(counted) <= 9, outputs  # each stops at 8; both may start the 8th at once
    assert len({trial.number for trial in trials}) == len(trials)
    assert len({trial.user_attrs["run_dir"] for trial in trials}) == len(trials)
    assert len({trial.user_attrs["pid"] for trial in trials}) == 2, "one process ran every trial"
    for trial in counted:
        assert Run.open(trial.user_attrs["run_dir"]).info["tune"]["trial"] == trial.number


def test_a_killed_study_continues_keeping_finished_trials_and_retrying_the_interrupted_one(project):
    space = write_space(project, LR_AND_RANK.replace("num_trials: 6", "num_trials: 3"))
    recipe = project / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("max_steps: 12", "max_steps: 60").replace("eval_every: 3", "eval_every: 30")
                      .replace("save_every: 6", "save_every: 30"))
    study_dir = project / "runs" / "tune-recipe"
    killed = togi_tune("recipe.yaml", "--space", space, "--seed", "5", "--pruner", "none", cwd=project)
    deadline = time.time() + 240
    while not (study_dir / "trial-001" / "metrics.jsonl").is_file():  # trial 0 done, trial 1 training
        assert killed.poll() is None and time.time() < deadline, killed.communicate()[0]
        time.sleep(0.1)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    before = {trial.number: trial for trial in study_trials(study_dir)}
    assert before[0].state.name == "COMPLETE" and before[1].state.name == "RUNNING"
    trial_0_metrics = (study_dir / "trial-000" / "metrics.jsonl").read_text()

    output = finished(togi_tune("recipe.yaml", "--space", space, "--seed", "5", "--pruner", "none", cwd=project))
    assert "trial 1 was interrupted" in output
    after = {trial.number: trial for trial in study_trials(study_dir)}
    assert after[0].state.name == "COMPLETE" and after[0].value == before[0].value
    assert (study_dir / "trial-000" / "metrics.jsonl").read_text() == trial_0_metrics  # not trained again
    assert after[1].state.name == "FAIL" and "interrupted" in after[1].user_attrs["error"]
    retry = after[2]
    assert retry.user_attrs["retry_of"] == 1 and retry.params == before[1].params and retry.state.name == "COMPLETE"
    assert len([trial for trial in after.values() if trial.state.name == "COMPLETE"]) == 3


def test_a_run_keeps_the_first_of_its_best_evaluations_and_the_search_scores_that_model(project):
    config = load_config(project / "recipe.yaml", ["monitoring.eval_metric=exact_match"])
    records = [{"step": 3, "eval_loss": 5.0, "eval_exact_match": 0.5}, {"step": 6, "eval_loss": 4.0, "eval_exact_match": 0.75},
               {"step": 9, "eval_loss": 3.0, "eval_exact_match": 0.75}, {"step": 12, "eval_loss": 2.5, "eval_exact_match": 0.5}]
    assert kept_value(records, "exact_match", config) == 0.75
    assert kept_value(records, "eval_loss", config) == 4.0  # the kept checkpoint's loss, not the last one's
    plain = load_config(project / "recipe.yaml")
    assert kept_value(records, "eval_loss", plain) == 2.5  # no best kept: the last evaluation


def test_search_space_names_are_the_recipes_keys_or_the_seeds_short_names(project):
    config = load_config(project / "recipe.yaml")
    assert recipe_key("learning_rate", config) == "training.learning_rate"
    assert recipe_key("lr", config) == "training.learning_rate"
    assert recipe_key("lora_r", config) == "lora.r"
    assert recipe_key("batch_size", config) == "training.batch_size"
    assert recipe_key("lora.dropout", config) == "lora.dropout"
    assert recipe_key("method", config) == "method"
    assert recipe_key("training.nonsense", config) is None
    assert recipe_key("lora.rank", config) == "lora.r"  # PEFT's and others' names inside a section, as in a recipe
    assert recipe_key("seed", config) == "training.seed"


@pytest.mark.parametrize(("space", "field", "line", "words"), [
    ("search_space:\n  lora.rank_of_it: {type: int, low: 2, high: 8}\n", "search_space.lora.rank_of_it", 2, "names no field"),
    ("search_space:\n  learning_rate: {type: float, low: 1e-4, high: 5}\n", "search_space.training.learning_rate", 2, "refuses 5.0"),
    ("search_space:\n  lora_r: {type: choice}\n", "search_space.lora_r", 2, "a choice needs values"),
    ("search_space:\n  lora_r: {type: int, low: 8, high: 2}\n", "search_space.lora_r", 2, "must be below high"),
    ("search_strategy: {type: bayes}\nsearch_space:\n  lora_r: {type: int, low: 2, high: 8}\n", "search_strategy.type", 1, "'random'"),
    ("search_space: {}\n", "search_space", 1, "at least 1 item"),
])
def test_a_bad_search_space_is_named_by_file_line_and_key_before_any_model_loads(project, space, field, line, words):
    path = write_space(project, space)
    with pytest.raises(ConfigError) as raised:
        load_search_space(path, project / "recipe.yaml")
    issue = raised.value.issues[0]
    assert issue.path == field and issue.line == line and words in issue.message, issue
    assert str(path) in str(raised.value)


def test_the_command_line_reports_a_bad_space_and_a_grid_without_steps_in_one_line_each(project):
    bad = write_space(project, "search_space:\n  lr: {type: float, low: 1e-4, high: 1}\n", "bad.yaml")
    output = subprocess.run([sys.executable, "-m", "togi.cli.main", "tune", "recipe.yaml", "--space", bad], cwd=project,
                            capture_output=True, text=True, timeout=120)
    assert output.returncode == 2 and "Traceback" not in output.stderr
    assert "the search space has 1 problem(s)" in output.stderr, output.stderr
    assert "bad.yaml:2 search_space.training.learning_rate: the recipe refuses 1.0: 1 is outside the sane range" in output.stderr
    grid = write_space(project, "search_strategy: {type: grid}\nsearch_space:\n  lr: {type: float, low: 1e-4, high: 1e-2}\n", "grid.yaml")
    output = subprocess.run([sys.executable, "-m", "togi.cli.main", "tune", "recipe.yaml", "--space", grid], cwd=project,
                            capture_output=True, text=True, timeout=120)
    assert output.returncode == 2 and "a grid needs a finite set of values" in output.stderr and "Traceback" not in output.stderr
    storage = subprocess.run([sys.executable, "-m", "togi.cli.main", "tune", "recipe.yaml", "--space", write_space(project, LR_AND_RANK),
                              "--storage", "not-a-url"], cwd=project, capture_output=True, text=True, timeout=120)
    assert storage.returncode == 2 and "--storage not-a-url: Could not parse SQLAlchemy URL" in storage.stderr, storage.stderr
    assert not (project / "runs").exists() or not any((project / "runs").rglob("trial-*"))


def test_an_objective_measured_on_validation_data_needs_some(project):
    recipe = project / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("val_file: val.jsonl", "val_ratio: 0"))
    space = load_search_space(write_space(project, LR_AND_RANK), recipe)
    with pytest.raises(Exception, match="validation data"):
        Tuner(recipe, space, trials=2, study_dir=project / "study")
    accuracy = load_search_space(write_space(project, LR_AND_RANK), project / "recipe.yaml")
    with pytest.raises(ConfigError, match="label_pattern"):  # accuracy reads labels with a pattern the recipe lacks
        Tuner(project / "recipe.yaml", accuracy, trials=2, objective="accuracy", study_dir=project / "study")
    assert yaml.safe_load((project / "recipe.yaml").read_text())["method"] == "lora"


def test_the_shipped_search_space_fits_the_demo_recipe():
    space = load_search_space(REPO / "examples" / "search" / "reviews-space.yaml", REPO / "examples" / "recipes" / "reviews-lora.yaml")
    assert (space.sampler, space.trials, space.objective, space.pruner) == ("tpe", 6, "accuracy", "median")
    assert [parameter.key for parameter in space.parameters] == ["training.learning_rate", "lora.r"]
