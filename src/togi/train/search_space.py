"""The search space of ``togi tune``: a YAML file in seed 002's shape, read and checked before any trial runs.

    search_strategy:
      type: tpe            # random, tpe or grid
      num_trials: 20       # --trials overrides it
    objective: accuracy    # optional: eval_loss, accuracy, macro_f1, exact_match or rouge_l
    pruner: median         # optional: median, hyperband or none
    search_space:
      training.learning_rate: {type: float, low: 1e-6, high: 1e-3, log: true}
      lora.r:                 {type: int, low: 8, high: 64, step: 8}
      training.batch_size:    {type: choice, values: [8, 16, 32]}

Any recipe key is addressable by its dotted path. The seed's bare names work too: ``learning_rate`` and
``batch_size`` name the one recipe field of that name, ``lora_r`` the field ``r`` of the ``lora`` section (other
tools' names for togi's keys, such as ``lr``, are read as in a recipe). Each parameter's extremes are put into
the recipe and validated there, so a key the recipe does not have, or a range the recipe refuses, is named with
its line before a model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from togi.config import KEY_ALIASES, ConfigError, ConfigIssue, TrainConfig, load_config, yaml_key_line

OBJECTIVES = ("eval_loss", "accuracy", "macro_f1", "exact_match", "rouge_l")
SAMPLERS = ("random", "tpe", "grid")
PRUNERS = ("median", "hyperband", "none")
SEARCH_SPACE = "search space"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParameterSpec(_Strict):
    type: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    values: list[Any] | None = None

    @field_validator("type", mode="before")
    @classmethod
    def _categorical_is_choice(cls, value: Any) -> Any:
        return "choice" if value == "categorical" else value

    @field_validator("low", "high", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a number") from None
        return value

    @model_validator(mode="after")
    def _complete(self) -> ParameterSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs values: a non-empty list, e.g. values: [8, 16, 32]")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a choice takes only values (low, high, log and step are for float and int)")
            return self
        if self.values is not None:
            raise ValueError(f"values is for type choice; a {self.type} takes low and high")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} needs low and high")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low above 0, not {self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("log and step do not go together (Optuna samples a log range continuously)")
        if self.type == "int" and not (float(self.low).is_integer() and float(self.high).is_integer()):
            raise ValueError(f"an int range needs whole numbers, not {self.low:g}..{self.high:g}")
        return self


class StrategySpec(_Strict):
    type: Literal["random", "tpe", "grid"] = "tpe"
    num_trials: int | None = Field(None, gt=0)


class SpaceFile(_Strict):
    search_strategy: StrategySpec = Field(default_factory=StrategySpec)
    objective: Literal["eval_loss", "accuracy", "macro_f1", "exact_match", "rouge_l"] | None = None
    pruner: Literal["median", "hyperband", "none"] | None = None
    search_space: dict[str, ParameterSpec] = Field(min_length=1)


@dataclass(frozen=True)
class Parameter:
    """One searched recipe key and its distribution."""

    key: str  # the recipe's dotted path, e.g. training.learning_rate
    spec: ParameterSpec

    def suggest(self, trial: Any) -> Any:
        spec = self.spec
        if spec.type == "choice":
            return trial.suggest_categorical(self.key, spec.values)
        if spec.type == "int":
            return trial.suggest_int(self.key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
        return trial.suggest_float(self.key, spec.low, spec.high, step=spec.step, log=spec.log)

    def grid_values(self) -> list[Any] | None:
        """Every value of a grid over this parameter, or None for a continuous float range."""
        spec = self.spec
        if spec.type == "choice":
            return list(spec.values)
        if spec.type == "int":
            return list(range(int(spec.low), int(spec.high) + 1, int(spec.step or 1)))
        if spec.step is None:
            return None
        count = math.floor((spec.high - spec.low) / spec.step + 1e-9) + 1
        return [round(spec.low + index * spec.step, 12) for index in range(count)]

    def extremes(self) -> list[Any]:
        """The values that show whether the recipe accepts the whole range."""
        spec = self.spec
        if spec.type == "choice":
            return list(spec.values)
        return [int(spec.low), int(spec.high)] if spec.type == "int" else [spec.low, spec.high]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    parameters: list[Parameter]
    sampler: str
    trials: int | None
    objective: str | None
    pruner: str | None

    def grid(self) -> dict[str, list[Any]]:
        """The grid sampler's search space; a ConfigError for a float range without a step."""
        grid = {}
        for parameter in self.parameters:
            values = parameter.grid_values()
            if values is None:
                raise space_error(str(self.path), ConfigIssue(f"search_space.{parameter.key}", "a grid needs a finite set of values",
                                                               "give the float a step, or make it a choice"))
            grid[parameter.key] = values
        return grid

    @property
    def grid_size(self) -> int:
        return math.prod(len(values) for values in self.grid().values())


def load_search_space(path: Path | str, recipe: Path | str | None, overrides: list[str] = ()) -> SearchSpace:
    """Read and check a search-space file against the recipe it will search. Raises ConfigError naming the file,
    the line and the key."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise space_error(source, ConfigIssue("search space", "no such file", "check the path of the search-space YAML"))
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        raise space_error(source, ConfigIssue("search space", f"invalid YAML: {getattr(error, 'problem', error)}",
                                               "check indentation and quoting", line=mark.line + 1 if mark else None)) from None
    if not isinstance(data, dict):
        raise space_error(source, ConfigIssue("search space", "the file must be a mapping", "see examples/search/"))
    try:
        spec = SpaceFile.model_validate(data)
    except ValidationError as error:
        issues = []
        for item in error.errors():
            location = [str(part) for part in item["loc"] if not str(part).startswith(("function-", "literal["))]
            hint = "use one of the values listed" if item["type"].startswith("literal") else "see examples/search/ for the shape"
            if item["type"] == "extra_forbidden":
                hint = "known keys: " + ", ".join(_model_at(location[:-1]).model_fields)
            issues.append(ConfigIssue(".".join(location) or "search space", item["msg"].removeprefix("Value error, "), hint,
                                      line=yaml_key_line(text, location)))
        raise space_error(source, *issues) from None
    base = load_config(recipe, list(overrides))
    parameters, written = [], {}  # written: each parameter's name in the file, for its line
    for name, parameter_spec in spec.search_space.items():
        key = recipe_key(name, base)
        if key is None:
            raise space_error(source, ConfigIssue(f"search_space.{name}", "names no field of this recipe",
                                                   "use the recipe's dotted key, e.g. training.learning_rate or lora.r",
                                                   line=yaml_key_line(text, ["search_space", name])))
        parameters.append(Parameter(key, parameter_spec))
        written[key] = name
    for parameter in parameters:  # the recipe must accept every extreme of every range
        for value in parameter.extremes():
            try:
                load_config(recipe, [*overrides, assignment(parameter.key, value)])
            except ConfigError as error:
                issue = error.issues[0]
                raise space_error(source, ConfigIssue(f"search_space.{parameter.key}", f"the recipe refuses {value!r}: {issue.message}",
                                                       issue.hint, line=yaml_key_line(text, ["search_space", written[parameter.key]]))) from None
    return SearchSpace(path, parameters, spec.search_strategy.type, spec.search_strategy.num_trials, spec.objective, spec.pruner)


def space_error(source: str, *issues: ConfigIssue) -> ConfigError:
    return ConfigError(source, list(issues), SEARCH_SPACE)


def assignment(key: str, value: Any) -> str:
    """A ``--set`` override for ``value``, written so that YAML reads it back as the same value (1e-06 alone
    would read as a string; 1.0e-06 does not)."""
    return f"{key}={yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).removesuffix(chr(10)).removesuffix('...').strip()}"


def recipe_key(name: str, config: TrainConfig) -> str | None:
    """The recipe's dotted key for a search-space name: a dotted key of the recipe as it is; a bare field name of
    one section (``learning_rate``); ``section_field`` (``lora_r``); another tool's name (``lr``)."""
    sections = {field: type(value) for field, value in config if isinstance(value, BaseModel)}
    if "." in name:
        section, _, field = name.partition(".")
        field = KEY_ALIASES.get(field, field) if section in sections and field not in sections[section].model_fields else field
        return f"{section}.{field}" if section in sections and field in sections[section].model_fields else None
    if name in type(config).model_fields and name not in sections:
        return name
    for section, model in sections.items():
        rest = name.removeprefix(f"{section}_")
        if rest != name and KEY_ALIASES.get(rest, rest) in model.model_fields:
            return f"{section}.{KEY_ALIASES.get(rest, rest)}"
    field = KEY_ALIASES.get(name, name)
    owners = [section for section, model in sections.items() if field in model.model_fields]
    return f"{owners[0]}.{field}" if len(owners) == 1 else None


def _model_at(location: list[str]) -> type[BaseModel]:
    if location[:1] == ["search_strategy"]:
        return StrategySpec
    if location[:1] == ["search_space"] and len(location) >= 2:
        return ParameterSpec
    return SpaceFile
