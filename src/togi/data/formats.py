"""Input formats, converted at the edge into the canonical examples of ``examples.py``.

Each record's shape is recognised from its keys. The file's format is the shape most of its records
have (or ``--format``); a record of another known shape is a ``mixed_formats`` finding, never a guess.
Every problem becomes a finding naming the line, the example and the field; an invalid record is
dropped from the examples, so later stages only ever see well-formed data.

| format          | keys                                                               | kind           |
|-----------------|--------------------------------------------------------------------|----------------|
| chat            | messages (+ tools, parallel_tool_calls): OpenAI chat JSONL         | chat           |
| alpaca          | instruction, input?, output, system?, history?                      | chat           |
| pairs           | input/output, prompt/completion or question/answer (+ system?)     | chat           |
| preference      | prompt?, chosen, rejected (TRL; strings or message lists)          | preference     |
| openai_dpo      | input.messages, preferred_output, non_preferred_output             | preference     |
| kto             | prompt, completion, label (TRL) or messages, label                 | kto            |
| classification  | text, label                                                        | classification |

CSV/TSV rows go through the same table; their question and answer columns can be renamed with
``input_column`` / ``output_column``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from togi.data.examples import (
    ChatExample,
    ClassificationExample,
    Dataset,
    Example,
    ExampleKind,
    KTOExample,
    Message,
    PreferenceExample,
    Prompt,
    Source,
)
from togi.data.findings import Finding, Severity
from togi.data.reader import DataFileError, RawRecord, ReadResult, read_records, require_readable_file

FORMAT_KINDS: dict[str, ExampleKind] = {
    "chat": ExampleKind.CHAT,
    "alpaca": ExampleKind.CHAT,
    "pairs": ExampleKind.CHAT,
    "preference": ExampleKind.PREFERENCE,
    "openai_dpo": ExampleKind.PREFERENCE,
    "kto": ExampleKind.KTO,
    "classification": ExampleKind.CLASSIFICATION,
}
FORMATS = tuple(FORMAT_KINDS)

ROLES = ("system", "user", "assistant", "tool", "function")
MESSAGE_KEYS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call")
CHAT_KEYS = ("messages", "tools", "parallel_tool_calls", "functions")
METADATA_KEY = "togi"  # what togi itself notes on rows it wrote (generated pairs, synthetic examples); no format reads it
PAIR_KEYS = (("input", "output"), ("prompt", "completion"), ("question", "answer"))
SHAPES_HINT = (
    "use one of: chat {messages}, alpaca {instruction, output}, pairs {input, output} / {prompt, completion} / "
    "{question, answer}, preference {prompt, chosen, rejected}, openai_dpo {input, preferred_output, "
    "non_preferred_output}, kto {prompt, completion, label}, classification {text, label}"
)
_TRUE = ("true", "1", "yes", "desirable", "good")
_FALSE = ("false", "0", "no", "undesirable", "bad")


@dataclass(frozen=True)
class LoadOptions:
    format: str | None = None  # None: detect
    encoding: str = "utf-8"
    input_column: str = "question"  # CSV/TSV column holding the user's text
    output_column: str = "answer"  # CSV/TSV column holding the expected answer
    system: str | None = None  # system prompt added to examples that have none


def detect_shape(value: Any) -> str | None:
    """The format a single record looks like, from its keys alone."""
    if not isinstance(value, dict):
        return None
    keys = value.keys()
    if "messages" in keys:
        return "kto" if "label" in keys else "chat"
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "openai_dpo"
    if "chosen" in keys or "rejected" in keys:
        return "preference"
    if "instruction" in keys:
        return "alpaca"
    if "label" in keys:
        return "kto" if "completion" in keys else "classification" if "text" in keys else None
    if any(prompt in keys and answer in keys for prompt, answer in PAIR_KEYS):
        return "pairs"
    return None


def load_dataset(path: Path | str, options: LoadOptions = LoadOptions()) -> Dataset:
    """Read a data file into canonical examples plus findings. Raises DataFileError only when the
    file cannot be read at all."""
    read = read_records(path, encoding=options.encoding)
    records = read.records
    if read.container in ("csv", "tsv"):
        records = [_rename_columns(record, options) for record in records]
    shapes = [detect_shape(record.value) for record in records]
    format_name = options.format or _dominant_shape(shapes) or "chat"
    dataset = Dataset(
        path=str(read.path),
        format=format_name,
        kind=FORMAT_KINDS[format_name],
        raw_records=[record.value for record in read.records],
        findings=list(read.findings),
        container=read.container,
        csv_header=read.csv_header,
    )
    if read.container in ("csv", "tsv") and records and not any(shapes) and options.format is None:
        dataset.findings.append(_missing_columns_finding(str(read.path), read.csv_header or [], options))
        return dataset
    converter = _RecordConverter(str(read.path), options, dataset.findings)
    for record, shape in zip(records, shapes):
        if options.format is None and shape is not None and shape != format_name:
            converter.report(
                record, "mixed_formats", f"this record is in {shape} form but the file is mostly {format_name}",
                "keep one format per file, or convert this record", severity=Severity.ERROR,
            )
            continue
        example = converter.convert(format_name, record)
        if example is not None:
            dataset.examples.append(example)
    return dataset


def load_prompts(path: Path | str, options: LoadOptions = LoadOptions()) -> tuple[list[Prompt], list[Finding]]:
    """Prompts to answer, with findings for the rows that are not: JSONL/JSON rows of chat messages (up to the
    last user message), ``{"prompt": ...}`` or a string, or a .txt file with one prompt per line."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        require_readable_file(path)
        read = ReadResult(path=path, container="txt")
        try:
            lines = path.read_text(encoding=options.encoding).splitlines()
        except UnicodeDecodeError as error:
            raise DataFileError(path, f"is not valid {options.encoding} text ({error.reason})", "save it as UTF-8, or pass --encoding") from None
        read.records = [RawRecord(line=number, index=number - 1, value=line) for number, line in enumerate(lines, start=1) if line.strip()]
    else:
        read = read_records(path, encoding=options.encoding)
    findings = list(read.findings)
    converter = _RecordConverter(str(read.path), options, findings)
    prompts = []
    for record in read.records:
        messages = converter.convert_prompt(record)
        if messages is not None:
            prompts.append(Prompt(messages=messages, source=Source(file=str(read.path), line=record.line, index=record.index)))
    return prompts, findings


def _dominant_shape(shapes: list[str | None]) -> str | None:
    counts: dict[str, int] = {}
    for shape in shapes:
        if shape is not None:
            counts[shape] = counts.get(shape, 0) + 1
    return max(counts, key=lambda shape: counts[shape]) if counts else None  # ties: first seen


def _rename_columns(record: RawRecord, options: LoadOptions) -> RawRecord:
    row = dict(record.value)
    for column, canonical in ((options.input_column, "question"), (options.output_column, "answer")):
        if column != canonical and column in row:
            row[canonical] = row.pop(column)
    return RawRecord(line=record.line, index=record.index, value=row)


def _missing_columns_finding(file: str, header: list[str], options: LoadOptions) -> Finding:
    return Finding(
        code="csv_missing_column",
        severity=Severity.ERROR,
        message=f"no {options.input_column!r}/{options.output_column!r} columns; the header has {header}",
        hint="name the columns with --input-column and --output-column, or use text,label / instruction,output headers",
        file=file,
        line=1,
    )


class _RecordConverter:
    """Converts one record at a time, appending findings; returns None for an invalid record."""

    def __init__(self, file: str, options: LoadOptions, findings: list[Finding]) -> None:
        self.file = file
        self.options = options
        self.findings = findings
        self._record: RawRecord | None = None
        self._failed = False
        self._converters: dict[str, Callable[[dict[str, Any]], Example | None]] = {
            "chat": self._chat,
            "alpaca": self._alpaca,
            "pairs": self._pairs,
            "preference": self._preference,
            "openai_dpo": self._openai_dpo,
            "kto": self._kto,
            "classification": self._classification,
        }

    # -- reporting ---------------------------------------------------------------------------

    def report(
        self,
        record: RawRecord,
        code: str,
        message: str,
        hint: str,
        *,
        severity: Severity = Severity.ERROR,
        field: str | None = None,
        message_index: int | None = None,
    ) -> None:
        self.findings.append(
            Finding(code=code, severity=severity, message=message, hint=hint, file=self.file, line=record.line,
                    example=record.index, message_index=message_index, field=field)
        )

    def _error(self, code: str, message: str, hint: str, *, field: str | None = None, message_index: int | None = None,
               severity: Severity = Severity.ERROR) -> None:
        assert self._record is not None
        self.report(self._record, code, message, hint, severity=severity, field=field, message_index=message_index)
        if severity is Severity.ERROR:
            self._failed = True

    @property
    def _source(self) -> Source:
        assert self._record is not None
        return Source(file=self.file, line=self._record.line, index=self._record.index)

    def convert(self, format_name: str, record: RawRecord) -> Example | None:
        self._record, self._failed = record, False
        if not isinstance(record.value, dict):
            self._error("not_an_object", f"the record is {_json_type(record.value)}, not an object",
                        "each example must be a JSON object such as {\"messages\": [...]}")
            return None
        if format_name != "chat" and detect_shape(record.value) is None and not self._has_any_known_key(record.value):
            self._error("unknown_format", f"no known keys in this record (it has {sorted(record.value)})", SHAPES_HINT)
            return None
        example = self._converters[format_name](record.value)
        return None if self._failed else example

    def convert_prompt(self, record: RawRecord) -> list[Message] | None:
        """The conversation a model is to answer, up to its last user message: a chat row (a trailing
        answer dropped), ``{"prompt": "..."}`` or ``{"prompt": [messages]}``, or a bare JSON string."""
        self._record, self._failed = record, False
        value = record.value
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict) or not ({"messages", "prompt"} & value.keys()):
            self._error("unknown_format", "a prompt row needs 'messages' or 'prompt'",
                        'write {"messages": [{"role": "user", "content": "..."}]} or {"prompt": "..."}, one per line')
            return None
        key = "messages" if "messages" in value else "prompt"
        if isinstance(value[key], list):
            messages = self._messages(value[key], key)
        else:
            text = self._string(value, key)
            messages = [Message(role="user", content=text)] if text is not None else None
        if messages is None or self._failed:
            return None
        last_user = max((i for i, message in enumerate(messages) if message.role == "user"), default=None)
        if last_user is None:
            self._error("missing_user", "no user message to answer", "add the user's question as a user message", field=key)
            return None
        return self._with_system(messages[: last_user + 1])

    @staticmethod
    def _has_any_known_key(row: dict[str, Any]) -> bool:
        known = {"messages", "instruction", "output", "input", "prompt", "completion", "question", "answer",
                 "chosen", "rejected", "preferred_output", "non_preferred_output", "text", "label"}
        return bool(known.intersection(row))

    # -- shared pieces -----------------------------------------------------------------------

    def _string(self, row: dict[str, Any], key: str, *, required: bool = True, path: str | None = None) -> str | None:
        path = path or key
        if key not in row or row[key] is None:
            if required:
                self._error("missing_field", f"missing {path!r}", f"add {path!r}; {SHAPES_HINT}", field=path)
            return None
        value = row[key]
        if not isinstance(value, str):
            self._error("wrong_type", f"{path!r} is {_json_type(value)}, expected a string", f"make {path!r} a string", field=path)
            return None
        if required and not value.strip():
            self._error("empty_content", f"{path!r} is empty", f"fill in {path!r} or drop this example", field=path)
            return None
        return value

    def _with_system(self, messages: list[Message], system: str | None = None) -> list[Message]:
        system = system or self.options.system
        if system and not (messages and messages[0].role == "system"):
            return [Message(role="system", content=system)] + messages
        return messages

    def _messages(self, value: Any, path: str, *, only_role: str | None = None) -> list[Message] | None:
        """A list of OpenAI-style messages, every problem reported with its index and field."""
        if not isinstance(value, list):
            self._error("wrong_type", f"{path!r} is {_json_type(value)}, expected a list of messages",
                        'write it as [{"role": "user", "content": "..."}, ...]', field=path)
            return None
        if not value:
            code = "missing_messages" if path == "messages" else "missing_field"
            self._error(code, f"{path!r} is an empty list", "add at least a user and an assistant message", field=path)
            return None
        messages = [self._message(item, f"{path}[{index}]", index, only_role) for index, item in enumerate(value)]
        return None if any(message is None for message in messages) else messages  # type: ignore[return-value]

    def _message(self, item: Any, path: str, index: int, only_role: str | None) -> Message | None:
        def error(code: str, message: str, hint: str, field: str = path, severity: Severity = Severity.ERROR) -> None:
            self._error(code, message, hint, field=field, message_index=index, severity=severity)

        if not isinstance(item, dict):
            error("wrong_type", f"the message is {_json_type(item)}, expected an object", 'write {"role": ..., "content": ...}')
            return None
        ok = True
        for key in item:
            if key not in MESSAGE_KEYS:
                error("unrecognized_key", f"unrecognized message key {key!r}", f"allowed keys: {', '.join(MESSAGE_KEYS)}", f"{path}.{key}")
                ok = False
        role = item.get("role")
        if "role" not in item:
            error("message_missing_key", "the message has no 'role'", f"add \"role\": one of {', '.join(ROLES)}", f"{path}.role")
            return None
        if not isinstance(role, str) or role not in ROLES:
            hint = "use 'system' for developer instructions" if role == "developer" else f"use one of: {', '.join(ROLES)}"
            error("unrecognized_role", f"unrecognized role {role!r}", hint, f"{path}.role")
            return None
        if only_role and role != only_role:
            error("unrecognized_role", f"role {role!r} where only {only_role!r} is allowed", f"this list holds {only_role} messages only", f"{path}.role")
            ok = False
        tool_calls = item.get("tool_calls")
        if tool_calls is not None and not self._valid_tool_calls(tool_calls, f"{path}.tool_calls", index, role):
            ok = False
        function_call = item.get("function_call")
        if function_call is not None and not self._valid_function_call(function_call, f"{path}.function_call", index, role):
            ok = False
        calls_a_tool = bool(tool_calls) or function_call is not None
        content = self._content(item, path, index, role, calls_a_tool)
        if content is None:
            return None
        weight = item.get("weight")
        if "weight" in item:
            if role != "assistant":
                error("weight_not_allowed", f"'weight' on a {role} message", "only assistant messages may carry a weight", f"{path}.weight")
                ok = False
            elif isinstance(weight, bool) or weight not in (0, 1):
                error("invalid_weight", f"weight is {weight!r}", "weight must be 0 (not trained on) or 1", f"{path}.weight")
                ok = False
        for key in ("name", "tool_call_id"):
            value = item.get(key)
            if value is not None and not isinstance(value, str):
                error("wrong_type", f"{key!r} is {_json_type(value)}, expected a string", f"make {key!r} a string", f"{path}.{key}")
                ok = False
        if not ok:
            return None
        return Message(role=role, content=content, weight=weight if role == "assistant" else None, name=item.get("name"),
                       tool_calls=tool_calls or None, tool_call_id=item.get("tool_call_id"))

    def _content(self, item: dict[str, Any], path: str, index: int, role: str, calls_a_tool: bool) -> str | None:
        field = f"{path}.content"
        content = item.get("content")
        if content is None:
            if calls_a_tool:
                return ""
            code = "message_missing_key" if "content" not in item else "content_not_string"
            self._error(code, "the message has no 'content'", "add \"content\": \"...\"", field=field, message_index=index)
            return None
        if isinstance(content, list):  # OpenAI content parts: text parts are joined, others refused
            texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
            if len(texts) != len(content) or not all(isinstance(text, str) for text in texts):
                self._error("content_not_string", "content parts other than text", "only text content can be trained on here; "
                            "write the content as a string", field=field, message_index=index)
                return None
            content = "".join(texts)
        if not isinstance(content, str):
            self._error("content_not_string", f"content is {_json_type(content)}, expected a string",
                        "write the content as a string", field=field, message_index=index)
            return None
        if not content.strip() and not calls_a_tool:
            severity = Severity.ERROR if role in ("user", "assistant") else Severity.WARNING
            self._error("empty_content", f"the {role} message is empty", "write the content or remove the message",
                        field=field, message_index=index, severity=severity)
            if severity is Severity.ERROR:
                return None
        return content

    def _valid_tool_calls(self, tool_calls: Any, path: str, index: int, role: str) -> bool:
        problem = None
        if role != "assistant":
            problem = "only assistant messages may call tools"
        elif not isinstance(tool_calls, list):
            problem = f"'tool_calls' is {_json_type(tool_calls)}, expected a list"
        else:
            for call in tool_calls:
                function = call.get("function") if isinstance(call, dict) else None
                if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                        or not isinstance(function.get("arguments"), str):
                    problem = "each tool call needs function.name and function.arguments (a JSON string)"
                    break
        if problem:
            self._error("wrong_type", problem, 'write [{"id": "call_1", "type": "function", "function": {"name": ..., "arguments": "{...}"}}]',
                        field=path, message_index=index)
        return problem is None

    def _valid_function_call(self, function_call: Any, path: str, index: int, role: str) -> bool:
        """OpenAI's older form of a tool call: ``{"name": ..., "arguments": "{...}"}`` on an assistant message."""
        if role != "assistant":
            problem = "only assistant messages may call functions"
        elif not isinstance(function_call, dict) or not isinstance(function_call.get("name"), str) \
                or not isinstance(function_call.get("arguments"), str):
            problem = f"'function_call' is {_json_type(function_call)}; it needs a name and arguments (a JSON string)"
        else:
            return True
        self._error("wrong_type", problem, 'write {"name": "...", "arguments": "{...}"}, or use tool_calls', field=path, message_index=index)
        return False

    def _conversation(self, messages: list[Message], path: str, system: str | None = None) -> list[Message]:
        """The messages with the system prompt added, and a finding if the first of them is an answer to train on."""
        messages = self._with_system(messages, system)
        if messages[0].trained:
            self._error("assistant_first", "the conversation starts with an assistant message: there is nothing before it to answer",
                        'start with the user\'s message (or a system prompt); to keep an opening greeting as context, give it "weight": 0',
                        field=f"{path}[0].role", message_index=0)
        return messages

    def _require_assistant(self, messages: list[Message], path: str = "messages") -> None:
        assistants = [message for message in messages if message.role == "assistant"]
        if not assistants:
            self._error("missing_assistant", "no assistant message", "add the answer the model should learn as an assistant message", field=path)
        elif not any(message.trained for message in assistants):
            self._error("nothing_to_train", "every assistant message has weight 0", "set weight 1 on at least one answer", field=path)

    def _prompt_and_answer(self, row: dict[str, Any], prompt_key: str, answer_key: str) -> tuple[list[Message], list[Message]] | None:
        """A prompt and an answer, each a string or a message list (TRL's conversational form)."""
        prompt_value, answer_value = row.get(prompt_key), row.get(answer_key)
        if isinstance(prompt_value, list):
            prompt = self._messages(prompt_value, prompt_key)
        else:
            text = self._string(row, prompt_key)
            prompt = [Message(role="user", content=text)] if text is not None else None
        if isinstance(answer_value, list):
            answer = self._messages(answer_value, answer_key, only_role="assistant")
        else:
            text = self._string(row, answer_key)
            answer = [Message(role="assistant", content=text)] if text is not None else None
        if prompt is None or answer is None:
            return None
        return prompt, answer

    # -- one method per format ---------------------------------------------------------------

    def _chat(self, row: dict[str, Any]) -> Example | None:
        if "messages" not in row:
            self._error("missing_messages", f"no 'messages' key (the record has {sorted(row)})",
                        'write {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}', field="messages")
            return None
        for key in row:
            if key not in CHAT_KEYS and key != METADATA_KEY:
                self._error("unrecognized_key", f"unrecognized key {key!r} is ignored", f"chat records hold {', '.join(CHAT_KEYS)}",
                            field=key, severity=Severity.WARNING)
        messages = self._messages(row["messages"], "messages")
        tools = row.get("tools")
        if tools is not None and not isinstance(tools, list):
            self._error("wrong_type", f"'tools' is {_json_type(tools)}, expected a list", "write tools as a list of function definitions", field="tools")
        parallel = row.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            self._error("wrong_type", "'parallel_tool_calls' must be true or false", "write true or false", field="parallel_tool_calls")
        if messages is None:
            return None
        self._require_assistant(messages)
        return ChatExample(messages=self._conversation(messages, "messages"), source=self._source, tools=tools, parallel_tool_calls=parallel)

    def _alpaca(self, row: dict[str, Any]) -> Example | None:
        instruction = self._string(row, "instruction")
        extra_input = self._string(row, "input", required=False)
        output = self._string(row, "output")
        system = self._string(row, "system", required=False)
        history = row.get("history") or []
        turns: list[Message] = []
        if not isinstance(history, list) or not all(
            isinstance(turn, list) and len(turn) == 2 and all(isinstance(text, str) for text in turn) for turn in history
        ):
            self._error("wrong_type", "'history' must be a list of [question, answer] pairs", 'write [["q1", "a1"], ["q2", "a2"]]', field="history")
        else:
            for question, answer in history:
                turns += [Message(role="user", content=question), Message(role="assistant", content=answer)]
        if instruction is None or output is None:
            return None
        prompt = instruction if not extra_input else f"{instruction}\n{extra_input}"
        messages = turns + [Message(role="user", content=prompt), Message(role="assistant", content=output)]
        return ChatExample(messages=self._with_system(messages, system), source=self._source)

    def _pairs(self, row: dict[str, Any]) -> Example | None:
        complete = [(p, a) for p, a in PAIR_KEYS if p in row and a in row]
        keys = complete[0] if complete else next(((p, a) for p, a in PAIR_KEYS if p in row or a in row), PAIR_KEYS[0])
        for ignored in complete[1:]:
            self._error("ambiguous_keys", f"{ignored[0]!r}/{ignored[1]!r} are ignored: the record also has {keys[0]!r}/{keys[1]!r}, which are used",
                        "keep one prompt/answer pair per record (make the other pair an example of its own)",
                        field=ignored[0], severity=Severity.WARNING)
        pair = self._prompt_and_answer(row, *keys)
        system = self._string(row, "system", required=False)
        if pair is None:
            return None
        return ChatExample(messages=self._conversation(pair[0] + pair[1], keys[0], system), source=self._source)

    def _preference(self, row: dict[str, Any]) -> Example | None:
        if "prompt" not in row and isinstance(row.get("chosen"), list) and isinstance(row.get("rejected"), list):
            return self._implicit_prompt_preference(row)
        chosen_pair = self._prompt_and_answer(row, "prompt", "chosen")
        rejected = self._answer_only(row, "rejected")
        if chosen_pair is None or rejected is None:
            return None
        self._check_distinct(chosen_pair[1], rejected)
        return PreferenceExample(prompt=self._conversation(chosen_pair[0], "prompt"), chosen=chosen_pair[1], rejected=rejected, source=self._source)

    def _implicit_prompt_preference(self, row: dict[str, Any]) -> Example | None:
        """TRL's implicit prompt: chosen and rejected are whole conversations sharing their start."""
        chosen, rejected = self._messages(row["chosen"], "chosen"), self._messages(row["rejected"], "rejected")
        if chosen is None or rejected is None:
            return None
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if shared == 0 or chosen[shared].role != "assistant" or rejected[shared].role != "assistant":
            self._error("missing_field", "'chosen' and 'rejected' do not share a prompt ending before an assistant answer",
                        "add a 'prompt' key, or start both conversations with the same messages", field="prompt")
            return None
        self._check_distinct(chosen[shared:], rejected[shared:])
        return PreferenceExample(prompt=self._conversation(chosen[:shared], "chosen"), chosen=chosen[shared:], rejected=rejected[shared:],
                                 source=self._source)

    def _answer_only(self, row: dict[str, Any], key: str) -> list[Message] | None:
        value = row.get(key)
        if isinstance(value, list):
            return self._messages(value, key, only_role="assistant")
        text = self._string(row, key)
        return [Message(role="assistant", content=text)] if text is not None else None

    def _check_distinct(self, chosen: list[Message], rejected: list[Message]) -> None:
        if [m.content for m in chosen] == [m.content for m in rejected]:
            self._error("identical_pair", "the chosen and rejected answers are the same", "a preference pair needs two different answers",
                        field="rejected")

    def _openai_dpo(self, row: dict[str, Any]) -> Example | None:
        conversation = row.get("input")
        if not isinstance(conversation, dict) or "messages" not in conversation:
            self._error("missing_field", "'input' must be an object with 'messages'", 'write "input": {"messages": [...]}', field="input.messages")
            return None
        prompt = self._messages(conversation["messages"], "input.messages")
        answers = []
        for key in ("preferred_output", "non_preferred_output"):
            value = row.get(key)
            if not isinstance(value, list) or len(value) != 1:
                self._error("wrong_type", f"{key!r} must be a list with exactly one assistant message",
                            f'write "{key}": [{{"role": "assistant", "content": "..."}}]', field=key)
                answers.append(None)
            else:
                answers.append(self._messages(value, key, only_role="assistant"))
        if prompt is None or answers[0] is None or answers[1] is None:
            return None
        self._check_distinct(answers[0], answers[1])
        return PreferenceExample(prompt=self._conversation(prompt, "input.messages"), chosen=answers[0], rejected=answers[1], source=self._source,
                                 tools=conversation.get("tools"))

    def _kto(self, row: dict[str, Any]) -> Example | None:
        label = self._boolean_label(row)
        if "messages" in row:
            messages = self._messages(row["messages"], "messages")
            if messages is not None:
                self._require_assistant(messages)
        else:
            pair = self._prompt_and_answer(row, "prompt", "completion")
            messages = pair[0] + pair[1] if pair else None
        if messages is None or label is None:
            return None
        return KTOExample(messages=self._conversation(messages, "messages" if "messages" in row else "prompt"), label=label, source=self._source)

    def _boolean_label(self, row: dict[str, Any]) -> bool | None:
        label = row.get("label")
        if isinstance(label, bool):
            return label
        if isinstance(label, (str, int)) and str(label).strip().lower() in _TRUE + _FALSE:
            return str(label).strip().lower() in _TRUE
        self._error("invalid_label", f"KTO label is {label!r}", "label must be true (a desirable answer) or false", field="label")
        return None

    def _classification(self, row: dict[str, Any]) -> Example | None:
        text = self._string(row, "text")
        label = row.get("label")
        if isinstance(label, bool) or not isinstance(label, (str, int)) or (isinstance(label, str) and not label.strip()):
            self._error("invalid_label", f"label is {label!r}", "label must be a non-empty string or an integer class id", field="label")
            label = None
        if text is None or label is None:
            return None
        return ClassificationExample(text=text, label=str(label).strip(), source=self._source)


def _json_type(value: Any) -> str:
    """The JSON type of a value with its article: 'a string', 'an object', 'null'."""
    if value is None:
        return "null"
    name = {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"
