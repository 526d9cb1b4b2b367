"""``togi data prefs`` and ``togi data augment``: data written by models, on the `togi data` app."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from togi.cli import render
from togi.cli.chat_clients import JUDGE_KEY_VARIABLES, chat_client_from_flags, local_chat_model
from togi.cli.common import EXIT_FINDINGS, errors, fail, quiet_libraries
from togi.cli.data import EncodingOption, LabelPatternOption, console, refuse
from togi.cli.terminal import styled
from togi.data.findings import Severity, has_errors
from togi.models.chat_client import ChatClientError
from togi.models.embedded import EMBEDDED_MODEL_NAME

AUGMENT_KEY_VARIABLES = ("TOGI_AUGMENT_API_KEY", "OPENAI_API_KEY")


@contextmanager
def _progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (none when it is not a terminal); yields ``advance_to(done)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=errors, disable=not errors.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda done: progress.update(task, completed=done)


def _refuse_findings(findings: list[Any], path: Path, what: str) -> None:
    if has_errors(findings):
        render.render_findings(errors, [finding for finding in findings if finding.severity is Severity.ERROR])
        raise fail(f"{path} has rows that are not {what}; nothing was generated", "fix those lines, then run the command again", EXIT_FINDINGS)


def prefs_command(
    prompts: Annotated[Path, typer.Option(help="Prompts: JSONL chat rows (the conversation up to its last user message; a final "
                                               "answer is dropped), {\"prompt\": ...} rows, or a .txt file with one prompt per line.")],
    model: Annotated[Optional[str], typer.Option(help="Model whose answers are sampled: a run directory (its tuned model, training chat "
                                                     f"template and system prompt), a model directory or name, or a .gguf file (default: {EMBEDDED_MODEL_NAME}).")] = None,
    n: Annotated[int, typer.Option("-n", min=2, help="Answers sampled per prompt; the judge picks the best and the worst.")] = 4,
    out: Annotated[Optional[Path], typer.Option(help="Output JSONL of pairs, appended to and continued on a rerun (default: PROMPTS.prefs.jsonl).")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature; above 0, or the n answers are the same.")] = 0.8,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling cut-off.")] = 1.0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per sampled answer.")] = 256,
    seed: Annotated[int, typer.Option(help="Seed; each prompt's answers depend only on it and the prompt, so a rerun gives the same ones.")] = 0,
    judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint of the judge, e.g. http://127.0.0.1:8000/v1 "
                                                         "(key: $TOGI_JUDGE_API_KEY or $OPENAI_API_KEY).")] = None,
    judge_model: Annotated[Optional[str], typer.Option(help="The judge's model name at --judge-url, or without it a local judge: a run "
                                                           "directory, a model directory, a .gguf file or the embedded name.")] = None,
    both_orders: Annotated[bool, typer.Option("--both-orders", help="Judge each prompt twice, the answers in reverse order the second "
                                                                    "time, and keep only pairs both verdicts agree on.")] = False,
    encoding: EncodingOption = "utf-8",
) -> None:
    """Preference pairs for DPO: sample n answers per prompt, let a judge pick the best and the worst.

    \b
    togi data prefs --model runs/sft --prompts prompts.jsonl -n 4 --judge-url http://127.0.0.1:8000/v1 --judge-model gpt-4o-mini
    togi export runs/sft --to merged && togi train --stage dpo --model runs/sft/export/merged --data prompts.prefs.jsonl
    Interrupted? Run the same command again: prompts already in --out are skipped."""
    from togi.data.formats import LoadOptions, load_prompts
    from togi.data.preference_pairs import SKIP_REASONS, PrefsOptions, generate_preference_pairs
    from togi.models.chat_model import ChatSettings

    quiet_libraries()
    if temperature == 0:
        raise fail("--temperature 0 samples the same answer n times, so no pair could be formed", "use e.g. --temperature 0.8")
    if not judge_url and not judge_model:
        raise fail("a judge is needed to pick the best and the worst answer",
                   "--judge-url URL --judge-model NAME for an OpenAI-compatible endpoint, or --judge-model PATH for a local model")
    out = out or prompts.with_name(f"{prompts.stem}.prefs.jsonl")
    if out.resolve() == prompts.resolve():
        raise fail("--out is the prompts file", "write the pairs to another file")
    rows, findings = load_prompts(prompts, LoadOptions(encoding=encoding))
    _refuse_findings(findings, prompts, "prompts")
    if not rows:
        raise fail(f"{prompts} holds no prompts", "write one prompt per line")
    sampler = local_chat_model(model or EMBEDDED_MODEL_NAME, role="the model")
    judge, judge_name = chat_client_from_flags(judge_url, judge_model, role="the judge", flags=("--judge-url", "--judge-model"),
                                               key_variables=JUDGE_KEY_VARIABLES)
    options = PrefsOptions(n=n, seed=seed, both_orders=both_orders, system=sampler.system, judge_name=judge_name)

    def sample(conversation: list[dict[str, str]], prompt_seed: int) -> list[str]:
        return sampler.sample(conversation, n, ChatSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=prompt_seed))

    try:
        with _progress("sampling and judging", len(rows)) as advance:
            summary = generate_preference_pairs(rows, sample, judge.complete, out, options, progress=advance)
    except ChatClientError as error:  # what this command leaves behind belongs in the hint; main.py reports it
        raise ChatClientError(error.message, f"{error.hint}; the pairs written so far stay in {out}: run the same command again to continue") from None
    if summary.dropped_partial_line:
        errors.print(f"note: dropped a cut-off last line of {out} (left by an interrupted run)", soft_wrap=True, highlight=False)
    for skip in summary.skipped[:10]:
        detail = f": {skip.detail!r}" if skip.detail else ""
        errors.print(styled(("skipped", "yellow"), f" {prompts}:{skip.line}: {SKIP_REASONS[skip.reason]}{detail}"), soft_wrap=True)
    reasons = ", ".join(f"{reason} {count}" for reason, count in summary.skipped_by_reason().items())
    console.print(f"{summary.written} pairs written to {out}" + (f" ({summary.already_done} prompts were already there)" if summary.already_done else "")
                  + f"; {len(summary.skipped)} of {summary.prompts} prompts skipped" + (f" ({reasons})" if reasons else ""), soft_wrap=True, highlight=False)
    if summary.written + summary.already_done == 0:
        raise fail("no preference pair was produced", "check the judge (does it answer in JSON?) and that answers differ (--temperature)", EXIT_FINDINGS)


def augment_command(
    source: Annotated[Path, typer.Argument(metavar="IN", help="Chat or classification data, JSONL. It is never modified.", show_default=False)],
    target: Annotated[Path, typer.Argument(metavar="OUT", help="Output JSONL: IN's lines unchanged, then the kept synthetic examples.", show_default=False)],
    paraphrases: Annotated[int, typer.Option(min=0, help="Paraphrases asked for per example.")] = 0,
    back_translate: Annotated[Optional[str], typer.Option(help="SOURCE:PIVOT languages, e.g. ja:en: translate each input into PIVOT and back.")] = None,
    url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint that writes the new inputs "
                                                   "(key: $TOGI_AUGMENT_API_KEY or $OPENAI_API_KEY).")] = None,
    model: Annotated[Optional[str], typer.Option(help="The model name at --url, or without it a local model: a run directory, "
                                                     "a model directory, a .gguf file or the embedded name.")] = None,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature of the model.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per reply.")] = 512,
    label_pattern: LabelPatternOption = None,
    encoding: EncodingOption = "utf-8",
) -> None:
    """More training examples: new wordings of each input, by paraphrase or back-translation, same answers.

    \b
    togi data augment train.jsonl train.aug.jsonl --paraphrases 2 --url http://127.0.0.1:8000/v1 --model gpt-4o-mini
    togi data augment train.jsonl train.aug.jsonl --back-translate ja:en --model runs/my-run"""
    from togi.data.augment import REJECT_REASONS, AugmentOptions, augment_dataset, parse_language_pair, require_augmentable, write_augmented
    from togi.data.formats import LoadOptions, load_dataset
    from togi.data.labels import compile_label_pattern
    from togi.data.reader import container_of

    quiet_libraries()
    if not paraphrases and not back_translate:
        raise fail("nothing to generate", "pass --paraphrases N, --back-translate SOURCE:PIVOT, or both")
    if not url and not model:
        raise fail("augmentation needs a model",
                   f"--url URL --model NAME for an OpenAI-compatible endpoint, or --model PATH (or {EMBEDDED_MODEL_NAME}) for a local one")
    options = AugmentOptions(paraphrases=paraphrases, back_translate=parse_language_pair(back_translate) if back_translate else None,
                             label_pattern=compile_label_pattern(label_pattern))
    if target.resolve() == source.resolve():
        raise fail("OUT is IN", "write to a new file; IN is never modified")
    if container_of(source) != "jsonl" or container_of(target) != "jsonl":
        raise fail("augment reads and writes JSONL, so that IN's lines are copied unchanged", f"convert first: togi data convert {source} data.jsonl")
    dataset = load_dataset(source, LoadOptions(encoding=encoding))
    if has_errors(dataset.findings):
        refuse(dataset, "augment")
    require_augmentable(dataset)
    client, _ = chat_client_from_flags(url, model, role="the augmentation model", flags=("--url", "--model"), key_variables=AUGMENT_KEY_VARIABLES)
    try:
        with _progress("augmenting", len(dataset.examples)) as advance:
            result = augment_dataset(dataset, lambda messages: client.complete(messages, temperature=temperature, max_tokens=max_tokens),
                                     options, progress=advance)
    except ChatClientError as error:  # what this command leaves behind belongs in the hint; main.py reports it
        raise ChatClientError(error.message, f"{error.hint}; nothing was written: run the command again once the model answers") from None
    write_augmented(source, target, result.records, encoding)
    rejected = sum(result.rejected.values())
    console.print(f"wrote {target}: the {len(dataset.raw_records)} records of {source} unchanged, then {len(result.records)} synthetic examples "
                  f"({result.generated} generated, {len(result.records)} kept, {rejected} rejected)", soft_wrap=True, highlight=False)
    for reason, count in result.rejected.most_common():
        console.print(f"  rejected {count}: {reason} ({REJECT_REASONS[reason]})", soft_wrap=True, highlight=False)
