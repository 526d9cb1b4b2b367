"""``togi predict``: label texts with a classification run, as a table or JSONL."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import make_console, print_json

console = make_console()


def predict_command(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A run of task: classification.", show_default=False)],
    texts: Annotated[Optional[list[str]], typer.Argument(metavar="TEXT", help="Texts to classify.", show_default=False)] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Texts from a file: .txt (one per line), or .jsonl/.json/.csv/.tsv "
                                                                       "rows with a \"text\" field.")] = None,
    top_k: Annotated[int, typer.Option(min=1, help="Show the K most probable labels of each text.")] = 1,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per text (JSONL) instead of a table.")] = False,
) -> None:
    """Label texts with a classifier trained by `togi train` (task: classification), with each label's probability.

    \b
    togi predict runs/reviews-classification "音はとても良いのですが、二日でバッテリーが切れました。"
    togi predict runs/reviews-classification --file reviews.txt --top-k 3 --json
    """
    from togi.data.texts import read_texts
    from togi.serve.classifier import load_classification_run

    quiet_libraries()
    inputs = list(texts or []) + (read_texts(file) if file is not None else [])
    if not inputs:
        raise fail("nothing to classify", f"pass texts after the run directory, or --file FILE: togi predict {run_dir} \"a text\"")
    classifier = load_classification_run(run_dir)
    predictions = classifier.predict(inputs)
    if json_lines:
        for prediction in predictions:
            print_json(prediction.to_dict(top_k), indent=None)
        return
    table = Table(title=f"{run_dir}: {len(classifier.labels)} labels", title_justify="left")
    table.add_column("text", overflow="fold", ratio=3)
    table.add_column("label", no_wrap=True)
    table.add_column("probability", justify="right")
    if top_k > 1:
        table.add_column(f"next {min(top_k, len(classifier.labels)) - 1}", overflow="fold", ratio=1)
    for prediction in predictions:
        row = [prediction.text, prediction.label, f"{prediction.probability:.3f}"]
        if top_k > 1:
            row.append(" · ".join(f"{label} {probability:.3f}" for label, probability in prediction.scores[1:top_k]))
        table.add_row(*row)
    console.print(table)
