"""The template-consistency check: an exported model must be prompted and stopped exactly as it was trained.

Two failures make an exported model answer badly while every file looks fine:
- the chat template at serving time differs from the one used in training (edited, lost, or translated
  wrongly for another runtime), so prompts no longer look like the training data;
- the token that ends an assistant turn in the training template is not an EOS or stop token of the
  export, so generation runs on past the answer.

``TrainingChat`` is what the run trained with: the template text recorded in run.json (older runs: the
tokenizer saved with the run) and the token that ends an assistant turn in it. Each export target
reports what it carries, and ``require_consistent`` refuses the export with every mismatch named.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from togi.data.template import chat_template_of
from togi.export import ExportError
from togi.export.chat_format import ChatFormat, ChatFormatError
from togi.runs import Run


class TemplateMismatch(ExportError):
    """The export would be prompted or stopped differently from training."""

    hint = "export from the run directory as training left it: the training template is recorded in its run.json"


@dataclass(frozen=True)
class TrainingChat:
    template: str
    end_of_turn: str  # the text that closes an assistant answer, e.g. "<|im_end|>"
    end_of_turn_id: int | None  # its token id, when it is one token
    format: ChatFormat | None  # the template as fixed pieces, when it has that form
    format_problem: str | None  # why it has not, otherwise

    @classmethod
    def of_run(cls, run_dir: Path, tokenizer: Any) -> TrainingChat:
        template = Run(run_dir).info.get("chat_template_text") or chat_template_of(tokenizer)[0]
        try:
            chat_format, problem = ChatFormat.from_template(tokenizer, template), None
            problem = chat_format.mismatch(tokenizer, template)
            if problem:
                chat_format = None
        except ChatFormatError as error:
            chat_format, problem = None, str(error)
        end_of_turn = (chat_format.end_of_turn.strip() if chat_format else "") or tokenizer.eos_token or ""
        ids = tokenizer.encode(end_of_turn, add_special_tokens=False) if end_of_turn else []
        return cls(template, end_of_turn, ids[0] if len(ids) == 1 else None, chat_format, problem)


def template_mismatch(where: str, exported: str | None, training: TrainingChat) -> str | None:
    if exported == training.template:
        return None
    if not exported:
        return f"{where} carries no chat template; the run trained with one"
    at = next((i for i, (a, b) in enumerate(zip(exported, training.template)) if a != b), min(len(exported), len(training.template)))
    return (f"{where}'s chat template differs from the training template at character {at}: "
            f"{exported[max(0, at - 20):at + 30]!r} instead of {training.template[max(0, at - 20):at + 30]!r}")


def stop_mismatch(where: str, stop_tokens: set[str], training: TrainingChat) -> str | None:
    if training.end_of_turn in stop_tokens:
        return None
    shown = ", ".join(repr(token) for token in sorted(stop_tokens)) or "none"
    return (f"assistant turns end with {training.end_of_turn!r} in the training template, but {where} stops only at {shown}: "
            "generation would run past the answer")


def tokens_of(tokenizer: Any, ids: Any) -> set[str]:
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return {tokenizer.convert_ids_to_tokens(int(token_id)) for token_id in ids}


def require_consistent(mismatches: list[str | None]) -> None:
    found = [mismatch for mismatch in mismatches if mismatch]
    if found:
        raise TemplateMismatch("template-consistency check failed, so nothing was exported:\n  - " + "\n  - ".join(found))
