"""``togi export RUN_A RUN_B ... --to multi-adapter``: one base model and several named LoRA adapters, each
trained for its own task on that base (seed 002's multi-adapter tasks), in one folder:

    OUT/base/               the base model the runs trained on, with their tokenizer, chat template and stops
    OUT/adapters/NAME/      each run's adapter, as PEFT saves it
    OUT/adapters.json       the manifest: the base, and each adapter's run, method, rank and task
    OUT/README.md           how to load it

PEFT loads it as it is::

    base = AutoModelForCausalLM.from_pretrained("OUT/base")
    model = PeftModel.from_pretrained(base, "OUT/adapters/reviews", adapter_name="reviews")
    model.load_adapter("OUT/adapters/faq", adapter_name="faq")
    model.set_adapter("faq")

and ``togi serve --model reviews=OUT/adapters/reviews --model faq=OUT/adapters/faq`` serves each as its own
model on one loaded base. ``combine`` adds one more adapter made from them by PEFT's ``add_weighted_adapter``
(linear, cat, ties, dare_linear, dare_ties, ...), for one model that does every task in part.

Every adapter is checked before the folder is moved into place: the base and each adapter, loaded back from the
folder with PEFT, give the logits the run's own model gives on one of its training prompts.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from togi.export import ExportError
from togi.export.consistency import TrainingChat, require_consistent, template_mismatch
from togi.export.hub import base_model_id
from togi.export.merge import check_saved_model, replace_directory, stop_at_end_of_turn
from togi.models.adapter_folder import MANIFEST
from togi.models.resolve import load_tokenizer, resolve_model
from togi.runs import Run

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
COMBINATIONS = ("linear", "cat", "svd", "ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd", "magnitude_prune")
LOGIT_TOLERANCE = 1e-4  # float32 weights copied as they are: the same logits up to summation order


@dataclass(frozen=True)
class NamedRun:
    name: str
    run: Run


def named_runs(entries: list[str]) -> list[NamedRun]:
    """``NAME=RUN_DIR`` or ``RUN_DIR`` (named after its directory), each a finished run with a LoRA or DoRA adapter."""
    runs = []
    for entry in entries:
        name, _, path = entry.rpartition("=") if "=" in entry else (Path(entry).name, "", entry)
        if not NAME.match(name):
            raise ExportError(f"adapter name {name!r} ({entry}): use letters, digits, '.', '_' and '-' (64 at most)",
                              "name it on the command line: NAME=RUN_DIR")
        run = Run.open(path)
        config = run.config
        if not config.traits.adapter or config.method not in ("lora", "dora", "qlora"):
            raise ExportError(f"{path} is a {config.method} run; a multi-adapter export takes LoRA, DoRA and QLoRA adapters",
                              "export a full or freeze run with --to merged; prompt and prefix tuning do not share a base with LoRA")
        if not run.output_dir.is_dir():
            raise ExportError(f"{path} has no trained adapter ({run.output_dir})", "finish the run first (togi train --resume)")
        runs.append(NamedRun(name, run))
    names = [entry.name for entry in runs]
    if len(set(names)) != len(names):
        raise ExportError(f"two adapters would be named {next(n for n in names if names.count(n) > 1)!r}", "name them: NAME=RUN_DIR")
    if len(runs) < 2:
        raise ExportError("a multi-adapter export needs two runs or more", "name each run: togi export A=runs/a B=runs/b --to multi-adapter")
    return runs


def export_multi_adapter(entries: list[str], out_dir: Path, *, combine: str | None = None, weights: list[float] | None = None,
                         density: float | None = None, combined_name: str = "combined", log: Any = print) -> Path:
    runs = named_runs(entries)
    first = runs[0]
    base_source = resolve_model(first.run.config.model)
    for entry in runs[1:]:
        other = resolve_model(entry.run.config.model)
        if other.directory.resolve() != base_source.directory.resolve():
            raise ExportError(f"{entry.run.path} trained on {entry.run.config.model}, {first.run.path} on {first.run.config.model}: "
                              "adapters share one base only when they were trained on the same one",
                              f"train each task's adapter on one base: togi train RECIPE --base-of {first.run.path}")
    tokenizer = load_tokenizer(str(first.run.output_dir))
    training = TrainingChat.of_run(first.run.path, tokenizer)
    require_consistent([template_mismatch(f"the tokenizer saved in {entry.run.path}", load_tokenizer(str(entry.run.output_dir)).chat_template,
                                          training) for entry in runs])
    if combine is not None:
        _check_combination(runs, combine, weights, density, combined_name)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir.parent))
    try:
        _write_base(base_source.directory, tokenizer, training, staging / "base")
        adapters = {}
        for entry in runs:
            target = staging / "adapters" / entry.name
            shutil.copytree(entry.run.output_dir, target)
            (target / "training_args.bin").unlink(missing_ok=True)  # a pickle of trainer settings: not part of an adapter
            settings = json.loads((target / "adapter_config.json").read_text(encoding="utf-8"))
            settings["base_model_name_or_path"] = base_model_id(entry.run.config.model)
            (target / "adapter_config.json").write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
            adapters[entry.name] = {"path": f"adapters/{entry.name}", "run": str(entry.run.path.resolve()), "method": entry.run.config.method,
                                    "r": settings.get("r"), "train_file": str(entry.run.config.data.train_file)}
        exported = _load_exported(staging, [entry.name for entry in runs])  # one base, every adapter: for the checks and the combination
        for entry in runs:
            difference = _logit_difference(exported, tokenizer, entry)
            log(f"  {entry.name}: loaded back with PEFT from the folder, largest logit difference to {entry.run.path} {difference:.2g}")
            if difference > LOGIT_TOLERANCE:
                raise ExportError(f"the adapter {entry.name} loaded from the export answers unlike its run {entry.run.path} "
                                  f"(largest logit difference {difference:.3g})", "this is a bug in togi: please report it")
        if combine is not None:
            log(f"combining {', '.join(adapters)} into {combined_name} ({combine})")
            _write_combination(exported, staging, [entry.name for entry in runs], combine, weights, density, combined_name)
            adapters[combined_name] = {"path": f"adapters/{combined_name}", "combination": combine,
                                       "of": [entry.name for entry in runs], "weights": weights or [1.0] * len(runs),
                                       **({"density": density} if density is not None else {})}
        manifest = {"base": "base", "base_model": base_model_id(first.run.config.model), "adapters": adapters}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(_readme(out_dir, list(adapters)), encoding="utf-8")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return replace_directory(staging, out_dir)


def _write_base(source: Path, tokenizer: Any, training: TrainingChat, target: Path) -> None:
    """The base's weights and config as the runs trained on them, their tokenizer, and stops at the end of a turn."""
    from transformers import GenerationConfig

    target.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and (path.suffix in (".safetensors", ".json") and not path.name.startswith(("tokenizer", "special_tokens"))):
            shutil.copy2(path, target / path.name)
    tokenizer.save_pretrained(target)
    try:
        generation = GenerationConfig.from_pretrained(source)
    except OSError:
        generation = GenerationConfig()
    stop_at_end_of_turn(generation, tokenizer, training)
    generation.save_pretrained(target)
    check_saved_model(target, training, "the exported base")


def _check_combination(runs: list[NamedRun], combine: str, weights: list[float] | None, density: float | None, name: str) -> None:
    if combine not in COMBINATIONS:
        raise ExportError(f"--combine {combine}: not one of PEFT's combinations", f"use one of {', '.join(COMBINATIONS)}")
    if weights is not None and len(weights) != len(runs):
        raise ExportError(f"--weights gives {len(weights)} weights for {len(runs)} adapters", "give one weight per adapter, e.g. --weights 0.5,0.5")
    if combine.startswith(("ties", "dare", "magnitude")) and density is None:
        raise ExportError(f"--combine {combine} keeps a share of each adapter's weights: it needs --density", "for example --density 0.5")
    if name in {entry.name for entry in runs} or not NAME.match(name):
        raise ExportError(f"--combined-name {name!r}: taken by an adapter, or not a name", "choose another, e.g. --combined-name all-tasks")
    ranks = {int(json.loads((entry.run.output_dir / "adapter_config.json").read_text())["r"]) for entry in runs}
    if combine == "linear" and len(ranks) > 1:
        raise ExportError(f"--combine linear adds the adapters' matrices, which needs one rank; these have {sorted(ranks)}",
                          "use --combine cat (ranks add up) or svd")


def _load_exported(staging: Path, names: list[str]) -> Any:
    """The exported base with every adapter of the folder loaded, as a user's PEFT would load them."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(staging / "base"), dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, str(staging / "adapters" / names[0]), adapter_name=names[0]).eval()
    for name in names[1:]:
        model.load_adapter(str(staging / "adapters" / name), adapter_name=name)
    return model


def _write_combination(model: Any, staging: Path, names: list[str], combine: str, weights: list[float] | None, density: float | None,
                       name: str) -> None:
    try:
        model.add_weighted_adapter(adapters=names, weights=weights or [1.0] * len(names), adapter_name=name, combination_type=combine,
                                   **({"density": density} if density is not None else {}))
    except (ValueError, NotImplementedError) as error:
        raise ExportError(f"PEFT could not combine the adapters ({combine}): {error}", "try --combine cat, which takes any ranks") from None
    saved = staging / ".combined"
    model.save_pretrained(str(saved), selected_adapters=[name])
    shutil.move(str(saved / name), str(staging / "adapters" / name))
    shutil.rmtree(saved)


def _logit_difference(exported: Any, tokenizer: Any, entry: NamedRun) -> float:
    """The largest difference between the logits of the run's own model and of its adapter loaded from the export,
    on the run's first training prompt."""
    import torch

    ids = tokenizer.apply_chat_template(_first_prompt(entry.run), add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    exported.set_adapter(entry.name)
    own, _ = entry.run.load_trained_model(precision="fp32")
    with torch.no_grad():
        return float((exported(input_ids=ids).logits - own.eval()(input_ids=ids).logits).abs().max())


def _first_prompt(run: Run) -> list[dict[str, str]]:
    with run.split_path("train").open(encoding="utf-8") as handle:
        messages = json.loads(handle.readline())["messages"]
    last_answer = max(index for index, message in enumerate(messages) if message["role"] == "assistant")
    return messages[:last_answer]


def _readme(out_dir: Path, names: list[str]) -> str:
    first, rest = names[0], names[1:]
    loads = "\n".join(f'model.load_adapter("{out_dir}/adapters/{name}", adapter_name="{name}")' for name in rest)
    serve = " ".join(f"--model {name}={out_dir}/adapters/{name}" for name in names)
    return f"""# One base, {len(names)} adapters

Exported by `togi export ... --to multi-adapter`. `base/` is the model the adapters were trained on, with the chat
template they were trained with; `adapters/` holds one PEFT adapter per task ({', '.join(names)}); `{MANIFEST}` says
which run each came from.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{out_dir}/base")
base = AutoModelForCausalLM.from_pretrained("{out_dir}/base")
model = PeftModel.from_pretrained(base, "{out_dir}/adapters/{first}", adapter_name="{first}")
{loads}
model.set_adapter("{rest[0] if rest else first}")  # switch tasks without reloading the base
```

Served as one model id per adapter on one loaded base:

    togi serve {serve}
"""
