"""``togi export --to ollama``: a GGUF file and a Modelfile that prompts it exactly as it was trained.

The Modelfile has:
- ``FROM`` the GGUF file beside it;
- ``TEMPLATE``: the training chat template translated into Ollama's Go template language (see
  ``chat_format``), checked on probe conversations before it is written;
- ``SYSTEM``: the training data's system prompt, when every training example had the same one;
- ``PARAMETER`` lines: ``stop`` at the token that ends an assistant turn (and the EOS token),
  ``temperature`` 0.3 and ``num_ctx`` (the model's context, at most 4096).
Then ``ollama create NAME -f Modelfile`` makes the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from togi.data.writer import atomic_write_text
from togi.export import ExportError
from togi.export.chat_format import ChatFormat
from togi.export.consistency import TrainingChat, require_consistent, stop_mismatch
from togi.export.gguf import GGUFExport, export_gguf
from togi.runs import Run

DEFAULT_TEMPERATURE = 0.3
MAX_DEFAULT_CONTEXT = 4096


@dataclass
class OllamaExport:
    modelfile: Path
    gguf: GGUFExport
    system: str | None
    stops: list[str]


def constant_system_prompt(run_dir: Path) -> str | None:
    """The system prompt every training example shares, or None when they differ or have none."""
    from togi.data.formats import load_dataset

    prompts = set()
    for example in load_dataset(Run(run_dir).split_path("train")).examples:
        messages = getattr(example, "prompt_messages", None) or getattr(example, "messages", [])
        prompts.add(messages[0].content if messages and messages[0].role == "system" else None)
        if len(prompts) > 1:
            return None
    return prompts.pop() if prompts else None


def _quoted(text: str) -> str:
    if '"""' in text:
        raise ExportError('the text contains """, which a Modelfile cannot quote',
                          'remove """ from the system prompt of the training data, or export with --to gguf')
    return f'"""{text}"""'


def modelfile_text(gguf_name: str, chat_format: ChatFormat, system: str | None, stops: list[str], context: int,
                   temperature: float = DEFAULT_TEMPERATURE) -> str:
    lines = [f"FROM ./{gguf_name}", "", f"TEMPLATE {_quoted(chat_format.to_ollama_template())}", ""]
    if system:
        lines += [f"SYSTEM {_quoted(system)}", ""]
    lines += [f"PARAMETER stop {json.dumps(stop, ensure_ascii=False)}" for stop in stops]
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER num_ctx {context}", ""]
    return "\n".join(lines)


def parse_modelfile(text: str) -> dict[str, Any]:
    """The instructions of a Modelfile that togi wrote: FROM, TEMPLATE, SYSTEM and the PARAMETER lists."""
    result: dict[str, Any] = {"PARAMETER": {}}
    rest = text
    while rest.strip():
        rest = rest.lstrip()
        command, _, rest = rest.partition(" ")
        if rest.startswith('"""'):
            value, _, rest = rest[3:].partition('"""')
        else:
            value, _, rest = rest.partition("\n")
        if command == "PARAMETER":
            key, _, argument = value.partition(" ")
            result["PARAMETER"].setdefault(key, []).append(json.loads(argument) if argument.startswith('"') else argument)
        else:
            result[command] = value
    return result


def export_ollama(run_dir: Path, out_dir: Path, quant: str = "q8_0", verify: bool = True, writer: str = "auto") -> OllamaExport:
    gguf = export_gguf(run_dir, out_dir, quant, verify=verify, writer=writer)
    training: TrainingChat = gguf.training
    if training.format is None:
        gguf.path.unlink(missing_ok=True)
        raise ExportError(f"the training chat template cannot be written as an Ollama TEMPLATE: {training.format_problem}. "
                          f"The GGUF export (--to gguf) carries the template itself.", "export with --to gguf")
    # The pieces were already checked against the template on the probe conversations (TrainingChat.of_run).
    stops = list(dict.fromkeys(token for token in (training.end_of_turn, gguf.eos_token) if token))
    require_consistent([stop_mismatch("the Modelfile", set(stops), training)])
    context = min(gguf.context_length or MAX_DEFAULT_CONTEXT, MAX_DEFAULT_CONTEXT)
    system = constant_system_prompt(run_dir)
    modelfile = out_dir / "Modelfile"
    atomic_write_text(modelfile, modelfile_text(gguf.path.name, training.format, system, stops, context))
    return OllamaExport(modelfile, gguf, system, stops)
