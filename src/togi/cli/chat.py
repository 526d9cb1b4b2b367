"""``togi chat``: talk to a run, a model or a GGUF file in the terminal, answers streamed as they are generated."""

from __future__ import annotations

import warnings
from typing import Annotated, Optional

import typer

from togi.cli.common import quiet_libraries
from togi.cli.terminal import echo, make_console, styled

console = make_console()
HELP_LINE = "/reset starts over, /system TEXT sets the system prompt, /exit (or Ctrl-D) quits"


def chat_command(
    model: Annotated[str, typer.Argument(metavar="RUN_DIR|MODEL|GGUF", help="A run directory, a model directory or name, or a .gguf file.",
                                         show_default=False)],
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Answer this one message and exit (no interactive session).")] = None,
    system: Annotated[Optional[str], typer.Option(help="System prompt (default for a run: the one all its training examples shared; "
                                                       "for a GGUF file: the SYSTEM of the Modelfile beside it).")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="0 answers greedily; higher samples more freely.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling cut-off when temperature > 0.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed for sampling.")] = 0,
    transformers_only: Annotated[bool, typer.Option("--transformers", help="Run a GGUF file with transformers even when llama.cpp is installed.")] = False,
) -> None:
    """Chat with a model, prompted with the chat template it was trained with.

    \b
    togi chat runs/my-run
    togi chat runs/my-run/export/gguf/model-q8_0.gguf -p "返品はできますか？"
    """
    from togi.export.chat import load_chat_model
    from togi.models.chat_model import ChatSettings

    quiet_libraries()
    warnings.filterwarnings("ignore")  # a conversation on screen: no library warnings between the answers
    settings = ChatSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    chat_model = load_chat_model(model, prefer_llama_cpp=not transformers_only)
    system_prompt = system if system is not None else chat_model.system
    history: list[dict[str, str]] = []

    def answer(text: str) -> None:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + history + [{"role": "user", "content": text}]
        pieces = []
        for piece in chat_model.stream(messages, settings):
            pieces.append(piece)
            echo(piece, end="")
        echo("")
        history.extend([{"role": "user", "content": text}, {"role": "assistant", "content": "".join(pieces).strip()}])

    try:
        if prompt is not None:
            answer(prompt)
            return
        console.print(styled((chat_model.name, "bold"), f" ({chat_model.backend}). {HELP_LINE}."), soft_wrap=True)
        if system_prompt:
            console.print(styled((f"system: {system_prompt}", "dim")), soft_wrap=True)
        while True:
            try:
                text = console.input(styled(("you>", "bold cyan"), " ")).strip()
            except EOFError:
                break
            if text in ("/exit", "/quit"):
                break
            if text == "/reset":
                history.clear()
                console.print(styled(("(conversation cleared)", "dim")))
            elif text.startswith("/system"):
                system_prompt = text[len("/system"):].strip() or None
                history.clear()
                console.print(styled((f"(system prompt {'set' if system_prompt else 'removed'}; conversation cleared)", "dim")))
            elif text:
                console.print(styled(("model>", "bold green"), " "), end="")
                answer(text)
    except KeyboardInterrupt:
        echo("")
    finally:
        chat_model.close()
