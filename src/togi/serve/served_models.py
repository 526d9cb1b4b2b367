"""The models ``togi serve --model NAME=PATH`` names: base models, and adapters trained outside a job.

PATH is a model directory (a base model, served as it is), or an adapter: a LoRA run's directory
(``runs/reviews``), or one adapter folder of a multi-adapter export (``exports/tasks/adapters/reviews``), or any
PEFT adapter folder whose ``base_model_name_or_path`` is on this machine. An adapter is served as its own model id
on its base, which is loaded once for all the adapters and jobs on it: the base it names is matched to a served
base (the same name, or the same directory), or else served too, as ``<NAME>-base``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from togi.errors import TogiError
from togi.models.adapter_folder import folder_of_adapter
from togi.models.embedded import EMBEDDED_MODEL_NAME
from togi.runs import Run


class ServedModelError(TogiError):
    hint = "--model NAME=PATH takes a model directory, an adapter run's directory, or an adapter folder"


@dataclass(frozen=True)
class ServedModels:
    bases: dict[str, str]  # served name -> reference (the embedded name, a directory or a hub id in the cache)
    adapters: dict[str, tuple[str, str]]  # served name -> (its base's served name, the adapter folder)


def served_models(entries: list[str]) -> ServedModels:
    bases: dict[str, str] = {EMBEDDED_MODEL_NAME: EMBEDDED_MODEL_NAME}
    adapters: dict[str, tuple[str, str]] = {}
    pending: list[tuple[str, str, Path]] = []  # adapters, matched to bases once every base is known
    for entry in entries:
        name, separator, path = entry.partition("=")
        if not separator or not name or not path:
            raise ServedModelError(f"--model {entry!r} is not NAME=PATH", "for example: --model my-llama=/models/llama-3.2-1b")
        if name in bases or name in adapters or name in (p[0] for p in pending):
            raise ServedModelError(f"--model {name} is given twice", "give each model its own name")
        folder = Path(path)
        if not folder.is_dir():
            raise ServedModelError(f"--model {name}: {path} is not a directory")
        adapter = _adapter_of(name, folder)
        if adapter is None:
            bases[name] = str(folder.resolve())
        else:
            pending.append((name, *adapter))
    for name, base_reference, adapter_dir in pending:
        adapters[name] = (_base_name(name, base_reference, bases), str(adapter_dir.resolve()))
    return ServedModels(bases, adapters)


def _adapter_of(name: str, folder: Path) -> tuple[str, Path] | None:
    """The base reference and adapter folder of an adapter run or folder; None for a model directory."""
    if Run.is_run(folder):
        run = Run.open(folder)
        if not run.config.traits.adapter:
            raise ServedModelError(f"--model {name}: {folder} is a {run.config.method} run, whose weights are a whole model",
                                   f"serve its trained model: --model {name}={run.output_dir}")
        if run.config.task != "chat":
            raise ServedModelError(f"--model {name}: {folder} is a {run.config.task} run; chat completions need a chat model",
                                   f"classify with it: togi predict {folder}")
        return run.config.model, run.output_dir
    settings_path = folder / "adapter_config.json"
    if not settings_path.is_file():
        return None
    found = folder_of_adapter(folder)
    if found is not None:
        root, manifest = found
        return str(root / manifest["base"]), folder
    reference = json.loads(settings_path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not reference:
        raise ServedModelError(f"--model {name}: {settings_path} names no base model (base_model_name_or_path)",
                               "serve its base with --model BASE=DIR, and the adapter from its run directory")
    return reference, folder


def _base_name(name: str, reference: str, bases: dict[str, str]) -> str:
    if reference in bases:
        return reference
    local = Path(reference)
    if local.is_dir():
        for served, served_reference in bases.items():
            if Path(served_reference).is_dir() and Path(served_reference).resolve() == local.resolve():
                return served
        new_name = f"{name}-base"
        bases[new_name] = str(local.resolve())
        return new_name
    if reference == EMBEDDED_MODEL_NAME:
        return EMBEDDED_MODEL_NAME
    raise ServedModelError(f"--model {name}: its base model {reference} is not on this machine",
                           f"serve the base too: --model BASE=/path/to/{Path(reference).name} (a directory with its weights)")
