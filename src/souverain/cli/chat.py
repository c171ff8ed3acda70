"""chat: an interactive conversation that streams tokens as they come."""

from __future__ import annotations

import typer

from souverain.cli.context import client, console


def chat(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    message: str = typer.Option(None, "--message", help="Send one message and exit."),
    system: str = typer.Option(None, "--system"),
    max_tokens: int = typer.Option(512, "--max-tokens"),
    temperature: float = typer.Option(None, "--temperature"),
) -> None:
    """Chat with a model. Empty line or Ctrl-D ends the conversation."""
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    with client() as c:
        while True:
            text = message if message is not None else _ask()
            if not text:
                return
            history.append({"role": "user", "content": text})
            reply = []
            for piece in c.stream_chat(
                model, history, max_tokens=max_tokens, temperature=temperature
            ):
                reply.append(piece)
                console.print(piece, end="", highlight=False, markup=False, soft_wrap=True)
            console.print()
            history.append({"role": "assistant", "content": "".join(reply)})
            if message is not None:
                return


def _ask() -> str:
    try:
        return console.input("[bold cyan]you>[/bold cyan] ").strip()
    except (EOFError, KeyboardInterrupt):
        return ""
