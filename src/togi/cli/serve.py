"""``togi serve``: the OpenAI-compatible fine-tuning server; ``togi jobs``: a client for any such API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from togi.cli.common import fail, quiet_libraries
from togi.cli.terminal import echo, make_console, print_json

console = make_console()
DataDir = Annotated[Path, typer.Option(help="Where the server keeps its database, files, jobs and models.")]
Database = Annotated[Optional[str], typer.Option(help="The server's state: postgresql://user@host:port/database, shared by "
                                                 "several replicas (pip install 'togi[cluster]'); default: SQLite in --data-dir.")]
DEFAULT_DATA_DIR = Path("togi-data")

serve_app = typer.Typer(help="Run the OpenAI-compatible fine-tuning server, and manage its API keys.", invoke_without_command=True)
keys_app = typer.Typer(help="API keys: each belongs to an organization.", no_args_is_help=True)
serve_app.add_typer(keys_app, name="keys")
jobs_app = typer.Typer(help="Drive an OpenAI-compatible fine-tuning API (OpenAI itself, or a togi server) with the openai package.",
                       no_args_is_help=True)


@serve_app.callback()
def serve(
    context: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    model: Annotated[Optional[list[str]], typer.Option("--model", help="Another model, NAME=PATH (repeatable): a base model's "
                                                       "directory, or an adapter (a LoRA run's directory, or a folder of togi export "
                                                       "--to multi-adapter), served on its base. The embedded default is always served.")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Jobs that train at the same time.")] = 1,
    max_file_mb: Annotated[int, typer.Option(min=1, help="Largest file upload accepted, in MB (larger: 413).")] = 512,
    max_batch: Annotated[int, typer.Option(min=1, help="Chat requests decoded together per base model (1: one at a time).")] = 32,
    max_waiting: Annotated[int, typer.Option(min=1, help="Chat requests that may wait per base model; beyond them: 429.")] = 64,
    ui: Annotated[bool, typer.Option("--ui/--no-ui", help="Serve the web dashboard at / (jobs, live curves, evaluations, playground).")] = True,
    database: Database = None,
    executor: Annotated[str, typer.Option(help="Where jobs train: local (child processes of this server) or ray (tasks on a "
                                          "Ray cluster, each with the GPUs its processes need; pip install 'togi[cluster]').")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="The Ray cluster for --executor ray: auto (the cluster this machine "
                                                       "belongs to), host:6379, or ray://host:10001.")] = None,
    storage: Annotated[Optional[str], typer.Option(help="Object storage for files, checkpoints and models: s3://bucket/prefix (or "
                                                   "any fsspec URL), mirrored by each machine's --data-dir; default: --data-dir alone.")] = None,
) -> None:
    """Serve files, fine-tuning jobs, models and chat completions under /v1, as OpenAI's API does.

    \b
    togi serve --port 8000 --data-dir togi-data
    then open http://127.0.0.1:8000/ and sign in with the key, or in Python:
    OpenAI(base_url="http://127.0.0.1:8000/v1", api_key=KEY)
    """
    if context.invoked_subcommand is not None:
        return
    import uvicorn

    import socket

    from togi.serve.app import create_app
    from togi.serve.database import open_store
    from togi.serve.executors import open_executor
    from togi.serve.served_models import served_models
    from togi.serve.storage import Storage

    quiet_libraries()
    if ray_address and executor != "ray":
        raise fail(f"--ray-address {ray_address} is for --executor ray; this server's executor is {executor}", "add --executor ray")
    served = served_models(model or [])
    models = served.bases
    store = open_store(database, data_dir)
    files = Storage(data_dir, storage)
    files.check()
    runner = open_executor(executor, ray_address)
    if not store.has_keys():
        key = store.create_key("default")
        console.print(f"No API keys yet: created one for organization 'default' (shown once, stored hashed):\n  {key}", soft_wrap=True)
    app = create_app(data_dir, models, adapters=served.adapters, slots=workers, max_file_bytes=max_file_mb * 1024 * 1024, store=store, max_batch=max_batch,
                     max_waiting=max_waiting, ui=ui, replica=socket.gethostname(), executor=runner,
                     storage=files)
    dashboard = f"dashboard: http://{host}:{port}/  " if ui else ""
    console.print(f"togi serve: {dashboard}API: http://{host}:{port}/v1  (OpenAPI: http://{host}:{port}/docs)  "
                  f"data: {data_dir.resolve()}" + (f" (mirroring {storage})" if storage else "") + f"  jobs: {executor}  base models: {', '.join(models)}"
                  + "".join(f"  {name}: an adapter on {base}" for name, (base, _) in served.adapters.items()), soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


@keys_app.command("create")
def create_key(
    org: Annotated[str, typer.Option("--org", help="The organization the key belongs to (created if new).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    database: Database = None,
) -> None:
    """Create an API key for an organization and print it (it is stored hashed: keep it)."""
    from togi.serve.database import open_store

    if not org.replace("-", "").replace("_", "").isalnum():
        raise fail(f"--org {org!r}: use letters, digits, - and _", "for example: --org acme")
    echo(open_store(database, data_dir).create_key(org))


# the client side
BaseUrl = Annotated[Optional[str], typer.Option(help="The API's base URL, e.g. http://127.0.0.1:8000/v1 (default: $OPENAI_BASE_URL or OpenAI).")]
ApiKey = Annotated[Optional[str], typer.Option(help="API key (default: $OPENAI_API_KEY).")]


def _client(base_url: str | None, api_key: str | None) -> Any:
    import openai

    try:
        return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=1)
    except openai.OpenAIError as error:
        raise fail(str(error), "pass --api-key or set OPENAI_API_KEY") from None


def _call(function: Any, *args: Any, **kwargs: Any) -> Any:
    import openai

    try:
        return function(*args, **kwargs)
    except openai.APIStatusError as error:
        body = error.body if isinstance(error.body, dict) else {}
        raise fail(f"{error.status_code}: {body.get('message') or error.message}", "see the message; `togi jobs --help`", code=1) from None
    except openai.APIConnectionError as error:
        raise fail(f"cannot reach the API: {error}", "check --base-url and that the server runs", code=1) from None


def _show(obj: Any) -> None:
    print_json(obj.model_dump(exclude_none=True))


@jobs_app.command("create")
def jobs_create(
    training_file: Annotated[str, typer.Option(help="A file id (file-...) or a local JSONL file to upload first.")],
    model: Annotated[str, typer.Option(help="Base model to fine-tune.")],
    validation_file: Annotated[Optional[str], typer.Option(help="A file id or a local JSONL file.")] = None,
    suffix: Annotated[Optional[str], typer.Option(help="Up to 64 characters added to the fine-tuned model's name.")] = None,
    n_epochs: Annotated[Optional[int], typer.Option(help="Epochs (default: auto).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size (default: auto).")] = None,
    learning_rate_multiplier: Annotated[Optional[float], typer.Option(help="Learning-rate multiplier (default: auto).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed.")] = None,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Create a fine-tuning job (uploading local files first) and print it."""
    client = _client(base_url, api_key)

    def file_id(value: str | None) -> str | None:
        if value is None or value.startswith("file-"):
            return value
        if not Path(value).is_file():
            raise fail(f"{value} is neither a file id nor a local file", "pass file-... or a path to a JSONL file")
        with open(value, "rb") as handle:
            return _call(client.files.create, file=handle, purpose="fine-tune").id

    hyperparameters = {name: value for name, value in (("n_epochs", n_epochs), ("batch_size", batch_size),
                                                        ("learning_rate_multiplier", learning_rate_multiplier)) if value is not None}
    job = _call(client.fine_tuning.jobs.create, model=model, training_file=file_id(training_file),
                validation_file=file_id(validation_file), suffix=suffix, seed=seed,
                method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})
    _show(job)


@jobs_app.command("list")
def jobs_list(limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """List fine-tuning jobs, newest first."""
    for job in _call(_client(base_url, api_key).fine_tuning.jobs.list, limit=limit).data:
        echo(f"{job.id}  {job.status:<16} {job.model}  {job.fine_tuned_model or ''}")


@jobs_app.command("get")
def jobs_get(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Show one job."""
    _show(_call(_client(base_url, api_key).fine_tuning.jobs.retrieve, job_id))


@jobs_app.command("events")
def jobs_events(
    job_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new events until the job ends.")] = False,
    base_url: BaseUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Print a job's events, oldest first."""
    client = _client(base_url, api_key)
    seen: set[str] = set()
    while True:
        events = _call(client.fine_tuning.jobs.list_events, job_id, limit=100).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                echo(f"{time.strftime('%H:%M:%S', time.localtime(event.created_at))}  {event.level:<5} {event.message}")
        if not follow or _call(client.fine_tuning.jobs.retrieve, job_id).status in ("succeeded", "failed", "cancelled"):
            return
        time.sleep(2)


@jobs_app.command("cancel")
def jobs_cancel(job_id: str, base_url: BaseUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a job."""
    _show(_call(_client(base_url, api_key).fine_tuning.jobs.cancel, job_id))
