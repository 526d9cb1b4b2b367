"""One error type: every error togi raises at its users is a ``TogiError`` with a message and a hint, the CLI
reports it in one place (message and hint, exit 2, or 1 when the data or the run failed), and anything else
shows as the bug it is."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import togi
from conftest import BROKEN, distinct_chats, write_jsonl
from togi.cli.main import BUG_NOTE, app
from togi.errors import TogiError

SOURCE = Path(togi.__file__).parent

# Exception classes defined in togi that are not raised at users, and why.
NOT_USER_ERRORS = {
    "togi.serve.http.APIError": "the server's HTTP response (status, OpenAI error code, param): the HTTP front end's way out, "
                               "as typer.Exit is the CLI's; library errors reach it as TogiErrors",
}
# Classes whose constructor derives the hint when none is passed.
DERIVED_HINTS = {
    "togi.config.ConfigError": "each issue carries its hint",
    "togi.train.result.TrainingFailed": "names the run directory that keeps what was saved",
}


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in togi, by qualified name, after importing each module of the package."""
    for module in pkgutil.walk_packages(togi.__path__, "togi."):
        if not module.name.endswith("__main__"):  # running it is the command line itself
            importlib.import_module(module.name)

    found: dict[str, type[BaseException]] = {}

    def visit(cls: type[BaseException]) -> None:
        for subclass in cls.__subclasses__():
            if subclass.__module__.split(".")[0] == "togi":
                found[f"{subclass.__module__}.{subclass.__qualname__}"] = subclass
            visit(subclass)

    visit(BaseException)
    return found


@pytest.fixture(scope="module")
def exception_classes() -> dict[str, type[BaseException]]:
    return _exception_classes()


def test_every_exception_class_togi_raises_at_users_is_a_togi_error(exception_classes):
    assert len(exception_classes) > 20  # the walk found the package's errors
    strays = sorted(name for name, cls in exception_classes.items() if not issubclass(cls, TogiError) and name not in NOT_USER_ERRORS)
    assert not strays, f"derive these from togi.errors.TogiError (or list them in NOT_USER_ERRORS with the reason): {strays}"
    assert set(NOT_USER_ERRORS) <= set(exception_classes), "NOT_USER_ERRORS names a class that no longer exists"


def test_errors_that_pydantic_or_callers_catch_as_value_errors_still_are(exception_classes):
    for name in ("togi.config.RecipeRuleError", "togi.data.labels.LabelPatternError", "togi.data.split.SplitError",
                 "togi.data.writer.NotConvertible", "togi.data.augment.AugmentError"):
        assert issubclass(exception_classes[name], TogiError) and issubclass(exception_classes[name], ValueError), name


def test_the_message_is_what_str_gives_and_the_hint_travels_with_it():
    from togi.data.reader import DataFileError
    from togi.models.embedded import EmbeddedModelMissing
    from togi.train import TrainingFailed

    error = DataFileError("data/train.jsonl", "no such file", "check the path")
    assert str(error) == error.message == "data/train.jsonl: no such file" and error.hint == "check the path"
    assert EmbeddedModelMissing("the embedded model package is not installed").hint.startswith("install it with")
    assert TrainingFailed("the loss became NaN", Path("runs/a")).hint == "what was saved is in runs/a"
    assert TogiError("something is wrong").hint == ""


def _raise_sites() -> list[tuple[str, int, ast.Call]]:
    sites = []
    for path in sorted(SOURCE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, (ast.Name, ast.Attribute)):
                sites.append((f"{path.relative_to(SOURCE.parent)}:{node.lineno}", node.lineno, node.exc))
    return sites


def test_every_user_error_raised_in_togi_carries_a_hint(exception_classes):
    """At each `raise SomeError(...)`: the call passes a hint, or the class has one for every case, or its
    constructor derives one (DERIVED_HINTS)."""
    by_name = {cls.__name__: (name, cls) for name, cls in exception_classes.items() if issubclass(cls, TogiError)}
    checked, missing = 0, []
    for where, _, call in _raise_sites():
        called = call.func.id if isinstance(call.func, ast.Name) else call.func.attr
        if called not in by_name:
            continue
        qualified, cls = by_name[called]
        checked += 1
        if cls.hint or qualified in DERIVED_HINTS:
            continue
        positional = [object()] * sum(not isinstance(arg, ast.Starred) for arg in call.args)
        keywords = {keyword.arg: object() for keyword in call.keywords if keyword.arg}
        if "hint" not in inspect.signature(cls).bind_partial(*positional, **keywords).arguments:
            missing.append(f"{where} {called}")
    assert checked > 60  # the scan saw the package's raise sites
    assert not missing, f"these raise sites give the user no hint: {missing}"


def test_the_derived_hints_are_there():
    from togi.config import ConfigError, ConfigIssue

    one = ConfigError("recipe.yaml", [ConfigIssue("lora.r", "must be > 0", "set lora.r to 16")])
    assert one.hint == "set lora.r to 16"
    two = ConfigError("recipe.yaml", [ConfigIssue("lora.r", "must be > 0", "set lora.r to 16"),
                                      ConfigIssue("epochs", "unknown key", "did you mean 'training.epochs'?")])
    assert two.hint and "set lora.r to 16" in str(two) and "training.epochs" in str(two)


def test_the_cli_prints_message_and_hint_of_a_missing_data_file_and_exits_2(cli, tmp_path):
    result = cli("data", "check", tmp_path / "missing.jsonl")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"togi: {tmp_path / 'missing.jsonl'}: no such file  "
                                     "(hint: check the path; relative paths start from the current directory)")


def test_text_from_the_user_is_printed_literally_not_as_markup(cli, tmp_path):
    path = tmp_path / "[bold red]train[/].jsonl"
    result = cli("data", "check", path)
    assert result.exit_code == 2 and "[bold red]train[/].jsonl: no such file" in result.stderr


def test_export_of_a_directory_that_is_not_a_run_is_a_user_error(cli, tmp_path):
    result = cli("export", tmp_path)
    assert result.exit_code == 2
    assert f"togi: {tmp_path} is not a togi run directory (no config.yaml)" in result.stderr
    assert "(hint: pass the directory a `togi train` run created)" in result.stderr


def test_export_of_a_run_whose_recipe_has_a_problem_reports_the_recipe_not_a_traceback(cli, tmp_path):
    """`togi export` used to catch ExportError alone: a recipe problem in an old run was a traceback."""
    (tmp_path / "config.yaml").write_text("model: some/model\nlora:\n  rr: 8\ndata:\n  train_file: train.jsonl\n", encoding="utf-8")
    for args in (("export", tmp_path), ("eval", tmp_path, "--data", BROKEN / "quality.jsonl")):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        assert f"togi: the recipe has 1 problem(s) ({tmp_path / 'config.yaml'}):" in result.stderr
        assert f"{tmp_path / 'config.yaml'}:3 lora.rr: unknown key" in result.stderr and "hint: did you mean 'lora.r'?" in result.stderr


def test_bad_training_data_lists_the_findings_then_exits_1(cli, tmp_path, tiny_model_dir):
    result = cli("train", "--data", BROKEN / "openai_rules.jsonl", "--model", tiny_model_dir, "--output-dir", tmp_path / "run")
    assert result.exit_code == 1  # the work was tried and the data failed it, as `togi data check` exits 1
    assert "openai_rules.jsonl:6" in result.stderr and "unrecognized_role" in result.stderr
    assert "errors; run `togi data check" in result.stderr and "(hint: fix the data, then train again)" in result.stderr


def test_a_preference_stage_on_chat_data_is_refused_with_a_hint(cli, tmp_path, tokenizer_dir):
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}])
    result = cli("train", "--stage", "dpo", "--model", tokenizer_dir, "--data", chats, "--output-dir", tmp_path / "run")
    assert result.exit_code == 1 and "needs preference pairs" in result.stderr
    assert "(hint: see the stage's data formats in `togi data convert --help`)" in result.stderr


def test_an_error_that_is_not_a_togi_error_is_shown_as_a_bug(monkeypatch, tmp_path):
    """A bug (here: a library call failing in a way togi does not expect) keeps its exception and traceback,
    is named a bug, and does not exit with the user-error code."""
    import togi.cli.data

    def broken_loader(*args, **kwargs):
        raise KeyError("messages")

    monkeypatch.setattr(togi.cli.data, "load_dataset", broken_loader)
    path = write_jsonl(tmp_path / "train.jsonl", [{"messages": []}])
    result = CliRunner().invoke(app, ["data", "check", str(path)])
    assert isinstance(result.exception, KeyError) and result.exit_code == 1
    assert BUG_NOTE in result.stderr and "hint:" not in result.stderr


def test_a_command_that_ends_with_its_own_exit_code_is_not_called_a_bug(tmp_path):
    """`togi data check` ends through typer.Exit (0 when clean, 1 with errors): an exit code, not an exception to report."""
    clean = write_jsonl(tmp_path / "clean.jsonl", distinct_chats(20))
    for path, code in ((clean, 0), (BROKEN / "openai_rules.jsonl", 1)):
        result = CliRunner().invoke(app, ["data", "check", str(path)])
        assert result.exit_code == code and BUG_NOTE not in result.stderr, result.stderr
