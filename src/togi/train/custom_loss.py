"""``training.loss``: the training loss of the user's choosing, in place of the model's cross-entropy.

A loss is a function ``loss(outputs, labels, batch, **options) -> torch.Tensor`` (a scalar):

- ``outputs``: what the model returned for the batch, without labels (``outputs.logits``: ``[batch, length,
  vocabulary]`` for a chat model, ``[batch, labels]`` for a classifier);
- ``labels``: the batch's labels (a chat model's token ids, -100 where no loss is taken and not yet shifted; a
  classifier's label indices);
- ``batch``: the whole batch as the model got it (``input_ids``, ``position_ids`` of a padding-free row, ...);
- ``options``: ``training.loss_options`` from the recipe.

It returns the mean over the batch. The recipe names it as ``training.loss: module:function`` (a module on the
Python path, or a file: ``losses/mine.py:function``) or by a built-in's name: ``label_smoothing`` (option
``smoothing``, default 0.1), ``focal`` (options ``gamma``, default 2, and ``alpha``), and ``contrastive`` (seed
002's: a classifier's pairs of texts, option ``margin``; see ``contrastive``). ``next_token_targets`` gives a
chat model's logits and targets lined up, for a loss of one's own.

Before training, togi binds the function's signature to those arguments and runs it on one real batch (a dry
run: forward only, no step), so a loss that cannot work is named with its error before the first step. It is
used for training steps only: the eval loss stays the plain next-token (or classification) loss, comparable
across recipes. Each pass's mean is weighted by its share of the step's labelled tokens, so that gradient
accumulation gives the mean over the step. The run records the loss in run.json (its source file and the file's
sha256), and a resumed run loads it again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from togi.errors import TogiError
from togi.train.data import IGNORE_INDEX

FIELD = "training.loss"


class LossError(TogiError):
    """The loss a recipe names cannot be used as it is."""


def next_token_targets(logits: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A chat model's logits and the token each position is to predict, as ``[positions, vocabulary]`` and
    ``[positions]`` (-100 where no loss is taken). The labels are shifted by one; in a padding-free row, the
    last token of an example is not asked to predict the first of the next."""
    if "shift_labels" in batch:
        targets = batch["shift_labels"]
    else:
        targets = F.pad(labels[..., 1:], (0, 1), value=IGNORE_INDEX)
        positions = batch.get("position_ids")
        if positions is not None and positions.shape == labels.shape:  # an example starts where the position is 0
            starts_next = F.pad(positions[..., 1:] == 0, (0, 1), value=False)
            targets = targets.masked_fill(starts_next, IGNORE_INDEX)
    return logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)


def _logits_and_targets(outputs: Any, labels: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    logits = outputs.logits.float()
    if logits.dim() == 3:  # a causal language model
        return next_token_targets(logits, labels, batch)
    return logits, labels.reshape(-1)  # a classifier: one label per text


def label_smoothing(outputs: Any, labels: torch.Tensor, batch: dict[str, Any], smoothing: float = 0.1) -> torch.Tensor:
    """Cross-entropy against targets that keep ``smoothing`` of their weight spread over every class (or token)."""
    logits, targets = _logits_and_targets(outputs, labels, batch)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=smoothing)


def focal(outputs: Any, labels: torch.Tensor, batch: dict[str, Any], gamma: float = 2.0, alpha: list[float] | None = None) -> torch.Tensor:
    """Focal loss (Lin et al., 2017): cross-entropy times (1 - p)^gamma, so examples the model already gets right
    weigh little; ``alpha``, one weight per label (a classifier), for imbalanced classes."""
    logits, targets = _logits_and_targets(outputs, labels, batch)
    kept = targets != IGNORE_INDEX
    logits, targets = logits[kept], targets[kept]
    log_probabilities = F.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)
    losses = -((1 - log_probabilities.exp()) ** gamma) * log_probabilities
    if alpha is not None:
        losses = losses * torch.tensor(alpha, dtype=losses.dtype, device=losses.device)[targets]
    return losses.mean() if losses.numel() else logits.sum() * 0


def contrastive(outputs: Any, labels: torch.Tensor, batch: dict[str, Any], margin: float = 1.0) -> torch.Tensor:
    """Seed 002's contrastive loss for pairs of texts, on a classifier's outputs: the examples of a batch pair up in
    order (1st with 2nd, 3rd with 4th, ...); a pair of one label is pulled together (its distance squared), a pair
    of two labels pushed at least ``margin`` apart. The distance is between the outputs' probability vectors, so the
    loss also shapes the classifier: alone it places texts, beside cross-entropy it separates the classes."""
    logits = outputs.logits.float()
    if logits.dim() != 2:
        raise LossError("the contrastive loss compares texts: it needs a classifier's outputs (task: classification)",
                        "train task classification, or choose label_smoothing or focal for a chat model")
    pairs = logits.shape[0] // 2
    if pairs == 0:
        return logits.sum() * 0
    first, second = logits[0 : 2 * pairs : 2].softmax(-1), logits[1 : 2 * pairs : 2].softmax(-1)
    different = (labels[0 : 2 * pairs : 2] != labels[1 : 2 * pairs : 2]).float()
    distance = F.pairwise_distance(first, second)
    return torch.mean((1 - different) * distance.pow(2) + different * torch.clamp(margin - distance, min=0.0).pow(2))


BUILT_IN: dict[str, Callable[..., torch.Tensor]] = {"label_smoothing": label_smoothing, "focal": focal, "contrastive": contrastive}


@dataclass
class CustomLoss:
    """A recipe's ``training.loss``, found, checked and ready to call."""

    reference: str
    function: Callable[..., torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)
    source: Path | None = None  # the file it was read from; None for a built-in

    def record(self) -> dict[str, Any]:
        """What run.json keeps of it."""
        record: dict[str, Any] = {"name": self.reference, "options": self.options}
        if self.source is not None:
            record.update(file=str(self.source), sha256=hashlib.sha256(self.source.read_bytes()).hexdigest())
        return record

    def __call__(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> tuple[torch.Tensor, Any]:
        """The loss of one pass, and the model's outputs. With ``num_items_in_batch`` (the step's labelled tokens, when
        the Trainer leaves the gradient-accumulation scaling to the loss), the pass's mean is weighted by its share."""
        labels = inputs["labels"]
        outputs = model(**{key: value for key, value in inputs.items() if key != "labels"})
        loss = self.function(outputs, labels, inputs, **self.options)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise LossError(f"{FIELD} {self.reference} returned {_describe(loss)}, not a scalar tensor",
                            "return the batch's mean loss, e.g. losses.mean()")
        if num_items_in_batch is not None:
            items = (labels[..., 1:] != IGNORE_INDEX).sum() if labels.dim() > 1 else torch.tensor(labels.numel())
            loss = loss * (items.to(loss.device) / num_items_in_batch)
        return loss, outputs

    def dry_run(self, model: Any, batch: dict[str, Any]) -> None:
        """Run the loss once on ``batch`` (forward only): a loss that fails, returns no scalar, a value that is not
        finite, or one that no trained weight reaches, is named before the first step."""
        try:
            loss, _ = self(model, batch)
        except LossError:
            raise
        except Exception as error:
            raise LossError(f"{FIELD} {self.reference} failed on the first batch: {type(error).__name__}: {error}",
                            "its arguments are (outputs, labels, batch, **training.loss_options); see togi.train.custom_loss") from None
        if not torch.isfinite(loss):
            raise LossError(f"{FIELD} {self.reference} gave {loss.item()} on the first batch", "the loss must be a finite number")
        if not loss.requires_grad:
            raise LossError(f"{FIELD} {self.reference} gave a value that no trained weight reaches (it needs no gradient)",
                            "compute it from outputs.logits (or outputs.hidden_states) with torch operations, without .item() or .detach()")


def with_custom_loss(trainer_class: type, loss: CustomLoss) -> type:
    """``trainer_class`` whose training steps take ``loss`` (its evaluation keeps the model's own)."""

    class TrainerWithCustomLoss(trainer_class):  # type: ignore[misc, valid-type]
        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None) -> Any:
            if not model.training:
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            value, outputs = loss(model, inputs, num_items_in_batch if self.model_accepts_loss_kwargs else None)
            return (value, outputs) if return_outputs else value

    return TrainerWithCustomLoss


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def load_custom_loss(reference: str, options: dict[str, Any] | None = None) -> CustomLoss:
    """``training.loss`` resolved: a built-in's name, ``module:function`` or ``path/to/file.py:function``; its
    signature checked against the arguments togi calls it with. Raises LossError naming the field."""
    options = dict(options or {})
    if reference in BUILT_IN:
        loss = CustomLoss(reference, BUILT_IN[reference], options)
    else:
        module_name, _, function_name = reference.rpartition(":")
        if not module_name or not function_name:
            raise LossError(f"{FIELD} {reference!r}: neither a built-in loss nor module:function",
                            f"use one of {', '.join(BUILT_IN)}, or e.g. my_losses:weighted_loss (a function in my_losses.py)")
        module, source = _import(module_name, reference)
        function = getattr(module, function_name, None)
        if not callable(function):
            raise LossError(f"{FIELD} {reference}: {module_name} has no function {function_name}",
                            f"functions there: {', '.join(name for name, value in vars(module).items() if inspect.isfunction(value)) or 'none'}")
        loss = CustomLoss(reference, function, options, source)
    try:
        inspect.signature(loss.function).bind(object(), object(), {}, **options)
    except TypeError as error:
        raise LossError(f"{FIELD} {reference} cannot be called as loss(outputs, labels, batch"
                        + "".join(f", {name}=..." for name in options) + f"): {error}",
                        "define it as def loss(outputs, labels, batch, **options) and give options in training.loss_options") from None
    except ValueError:  # a builtin without a signature: the dry run checks it
        pass
    return loss


def _import(module_name: str, reference: str) -> tuple[Any, Path | None]:
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise LossError(f"{FIELD} {reference}: no file {path}", "the path is read from the directory togi runs in")
        spec = importlib.util.spec_from_file_location(f"togi_user_loss_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:
            raise LossError(f"{FIELD} {reference}: {path} failed to import: {type(error).__name__}: {error}",
                            "run python on that file to see the error") from None
        return module, path.resolve()
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # my_losses:fn finds my_losses.py where togi runs, as python -m would
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise LossError(f"{FIELD} {reference}: no module {error.name}",
                        f"put {module_name.replace('.', '/')}.py in the directory togi runs in, or name the file: path/to/{module_name}.py:function") from None
    except Exception as error:
        raise LossError(f"{FIELD} {reference}: {module_name} failed to import: {type(error).__name__}: {error}",
                        f"run python -c 'import {module_name}' to see the error") from None
    source = getattr(module, "__file__", None)
    return module, Path(source).resolve() if source else None
