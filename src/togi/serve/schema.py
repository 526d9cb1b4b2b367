"""The request bodies of the API, each field typed once, strictly, with OpenAI's ranges.

Strict types: no booleans for numbers, no numeric strings, finite floats only, integers in the range the
server can use (an overflowing seed is a 400, not a 500 deep in torch). Hyper-parameters are the same
model whether they come at the top level or under ``method.supervised`` / ``method.dpo``, so nothing
reaches a job that the top level would refuse. A bad body is answered 400 by the app's validation handler,
with the field's dotted path as ``param``.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, model_validator

Finite = dict(strict=True, allow_inf_nan=False)
SEED_LIMIT = 2**31 - 1  # training seeds go to numpy, which takes 32 bits
SAMPLING_SEED_LIMIT = 2**63 - 1  # a torch generator's seed


class Body(BaseModel):
    """A request body: strict types, unknown fields ignored (newer clients send fields older servers do not know)."""

    model_config = ConfigDict(strict=True, extra="ignore")


def auto_or(kind: type, low: float, high: float, low_included: bool = True) -> Any:
    """A hyper-parameter: "auto", or a number of ``kind`` in its range. One validator, so that a wrong value
    gets one message saying what is allowed (a union would report each of its members)."""
    range_text = f"{'[' if low_included else '('}{low:g}, {high:g}]"
    wanted = f"'auto' or {'an integer' if kind is int else 'a number'} in {range_text}"

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
            raise ValueError(f"should be {wanted}, not {type(value).__name__} {value!r}"[:200])
        if kind is float and not math.isfinite(value):
            raise ValueError(f"should be {wanted}, not {value}")
        if not (low <= value if low_included else low < value) or value > high:
            raise ValueError(f"{value:g} is outside {range_text}: it should be {wanted}")
        return kind(value)

    return Annotated[Union[Literal["auto"], kind], PlainValidator(check, json_schema_input_type=Union[Literal["auto"], kind])]


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where in a parsed JSON body a string (or key) holds a lone surrogate escape such as ``"\\ud800"``:
    valid JSON, but not Unicode, so it could be neither stored as UTF-8 nor tokenized."""
    if isinstance(value, str):
        return path or "body" if any("\ud800" <= character <= "\udfff" for character in value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        inner = f"{path}.{key}" if path else str(key)
        found = lone_surrogate_path(key, inner) if isinstance(key, str) else None
        if found := found or lone_surrogate_path(item, inner):
            return found
    return None


class TopLevelBody(Body):
    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        if (path := lone_surrogate_path(data)) is not None:
            raise ValueError(f"{path} holds a lone surrogate escape (like \\ud800), which is not valid Unicode text")
        return data


class SupervisedHyperparameters(Body):
    n_epochs: auto_or(int, 1, 50) = "auto"  # type: ignore[valid-type]
    batch_size: auto_or(int, 1, 256) = "auto"  # type: ignore[valid-type]
    learning_rate_multiplier: auto_or(float, 0, 1e6, low_included=False) = "auto"  # type: ignore[valid-type]


class DpoHyperparameters(SupervisedHyperparameters):
    beta: auto_or(float, 0, 2, low_included=False) = "auto"  # type: ignore[valid-type]


class SupervisedMethod(Body):
    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)


class DpoMethod(Body):
    hyperparameters: DpoHyperparameters = Field(default_factory=DpoHyperparameters)


class Method(Body):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Optional[SupervisedMethod] = None
    dpo: Optional[DpoMethod] = None
    reinforcement: Optional[dict[str, Any]] = None

    def hyperparameters(self) -> dict[str, Any]:
        """The hyper-parameters of the method's own section (its defaults where the section is left out)."""
        if self.type == "dpo":
            return (self.dpo or DpoMethod()).hyperparameters.model_dump()
        if self.type == "supervised":
            return (self.supervised or SupervisedMethod()).hyperparameters.model_dump()
        return {}


Suffix = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
MetadataKey = Annotated[str, StringConstraints(max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobRequest(TopLevelBody):
    model: str
    training_file: str
    validation_file: Optional[str] = None
    suffix: Optional[Suffix] = None
    seed: Optional[Annotated[int, Field(ge=0, le=SEED_LIMIT)]] = None
    metadata: Optional[Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]] = None
    integrations: Optional[list[Any]] = None
    hyperparameters: Optional[DpoHyperparameters] = None
    method: Optional[Method] = None
    # togi's own field, beside OpenAI's (the openai client sends it with extra_body={"processes": 2}): a supervised job
    # trained on this many processes of the server's worker slots (togi serve --workers), through togi train's launcher.
    processes: Annotated[int, Field(ge=1, le=64)] = 1

    @model_validator(mode="after")
    def _beta_only_for_dpo(self) -> JobRequest:
        if self.hyperparameters is not None and self.hyperparameters.beta != "auto" and (self.method is None or self.method.type != "dpo"):
            raise ValueError("hyperparameters.beta applies to method.type 'dpo' only")
        return self

    def resolved_method(self) -> dict[str, Any]:
        """The method as stored on the job: the one given, or supervised with the top-level hyper-parameters."""
        if self.method is not None:
            method = self.method.model_dump(exclude_none=True)
            if self.method.type in ("supervised", "dpo"):
                method[self.method.type] = {"hyperparameters": self.method.hyperparameters()}
            return method
        given = (self.hyperparameters or SupervisedHyperparameters()).model_dump(exclude={"beta"})
        return {"type": "supervised", "supervised": {"hyperparameters": given}}


class ContentPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: Optional[str] = None


class Message(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")  # name, tool_calls, tool_call_id ... pass through
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[ContentPart], None] = None


class ChatRequest(TopLevelBody):
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    temperature: Optional[Annotated[float, Field(ge=0, le=2, **Finite)]] = None
    top_p: Optional[Annotated[float, Field(gt=0, le=1, **Finite)]] = None
    max_tokens: Optional[Annotated[int, Field(ge=1, le=1_000_000)]] = None
    max_completion_tokens: Optional[Annotated[int, Field(ge=1, le=1_000_000)]] = None
    stop: Union[str, Annotated[list[str], Field(max_length=4)], None] = None
    seed: Optional[Annotated[int, Field(ge=-SAMPLING_SEED_LIMIT - 1, le=SAMPLING_SEED_LIMIT)]] = None
    n: Annotated[int, Field(ge=1, le=4)] = 1
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
