"""Every request body is checked by one typed schema: a bad value is a 400 naming its field, never a 500,
and nothing a request could not have been is stored. A seeded fuzz of a few hundred malformed requests
across the endpoints keeps the server answering, with no traceback in its log."""

from __future__ import annotations

import json
import random
import urllib.error
import urllib.request

import openai
import pytest

from conftest import distinct_chats, write_jsonl
from test_serve import client, key, server, upload  # noqa: F401 (fixtures: a server of this module's own, as test_serve starts one)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")


def send(server, key, method, path, body: bytes | None = None, content_type="application/json"):
    """One raw request: (status, parsed JSON body or None)."""
    request = urllib.request.Request(f"{server.url}{path}", data=body, method=method,
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, None


@pytest.mark.parametrize(("hyperparameters", "param"), [
    ({"n_epochs": "abc"}, "method.supervised.hyperparameters.n_epochs"),
    ({"n_epochs": 1.5}, "method.supervised.hyperparameters.n_epochs"),
    ({"n_epochs": True}, "method.supervised.hyperparameters.n_epochs"),
    ({"n_epochs": "3"}, "method.supervised.hyperparameters.n_epochs"),
    ({"batch_size": 0}, "method.supervised.hyperparameters.batch_size"),
    ({"learning_rate_multiplier": 1e9}, "method.supervised.hyperparameters.learning_rate_multiplier"),
    ({"learning_rate_multiplier": 1000}, "method.supervised.hyperparameters.learning_rate_multiplier"),  # lr 0.2: training refuses it
])
def test_method_hyperparameters_are_checked_like_the_top_level_ones(client, tmp_path, hyperparameters, param):
    data = upload(client, write_jsonl(tmp_path / "d.jsonl", distinct_chats(12))).id
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="tiny", training_file=data, method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters}})
    assert error.value.param == param
    with pytest.raises(openai.BadRequestError) as top_level:
        client.fine_tuning.jobs.create(model="tiny", training_file=data, hyperparameters=hyperparameters)
    assert top_level.value.param in (param.replace("method.supervised.", ""), param)


def test_the_multiplier_error_says_what_range_training_accepts(client, tmp_path):
    data = upload(client, write_jsonl(tmp_path / "d.jsonl", distinct_chats(12))).id
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="tiny", training_file=data, hyperparameters={"learning_rate_multiplier": 1000})
    message = error.value.body["message"]
    assert "learning rate of 0.2" in message and "between 5e-05 and 500" in message


def test_a_non_finite_multiplier_is_refused_and_never_stored(server, key, client, tmp_path):
    data = upload(client, write_jsonl(tmp_path / "d.jsonl", distinct_chats(12))).id
    body = ('{"model": "tiny", "training_file": "%s", "hyperparameters": {"learning_rate_multiplier": 1e999}}' % data).encode()
    status, answer = send(server, key, "POST", "/fine_tuning/jobs", body)
    assert status == 400 and answer["error"]["param"] == "hyperparameters.learning_rate_multiplier"
    assert send(server, key, "GET", "/fine_tuning/jobs")[0] == 200  # the list still reads


@pytest.mark.parametrize(("fields", "param"), [
    ({"suffix": "a/b"}, "suffix"), ({"suffix": "has space"}, "suffix"), ({"suffix": "x\ny"}, "suffix"), ({"suffix": "x" * 65}, "suffix"),
    ({"seed": 2**70}, "seed"), ({"method": {"type": ["supervised"]}}, "method.type"), ({"method": {"type": "supervised", "supervised": "str"}},
                                                                                        "method.supervised"),
])
def test_job_fields_outside_openais_rules_are_400(client, fields, param):
    with pytest.raises(openai.BadRequestError) as error:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-none", **fields)
    assert error.value.param == param


@pytest.mark.parametrize(("fields", "param"), [
    ({"seed": 2**70}, "seed"), ({"messages": [{"role": 5, "content": "hi"}]}, "messages.0.role"), ({"temperature": float("nan")}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": [1]}, "stop"), ({"n": 9}, "n"),
])
def test_chat_fields_outside_their_range_are_400(server, key, fields, param):
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, **fields}
    for stream in (False, True):
        status, answer = send(server, key, "POST", "/chat/completions", json.dumps({**body, "stream": stream}).encode())
        assert status == 400 and answer["error"]["param"] == param, answer


@pytest.mark.parametrize("query", ["limit=0", "limit=-1", "limit=101", "limit=abc"])
def test_page_limits_are_1_to_100(server, key, query):
    status, answer = send(server, key, "GET", f"/fine_tuning/jobs?{query}")
    assert status == 400 and answer["error"]["param"] == "limit"


def test_file_order_is_asc_or_desc(server, key):
    assert send(server, key, "GET", "/files?order=garbage")[0] == 400
    assert send(server, key, "GET", "/files?order=asc")[0] == 200


ODD_VALUES = [None, True, False, 0, -1, 1.5, 2**70, "", "abc", "3", "auto", [], {}, [1, "a"], {"x": 1}, "x" * 5000, "\ud800", "[/INST]"]
JOB_FIELDS = ["model", "training_file", "validation_file", "suffix", "seed", "metadata", "hyperparameters", "hyperparameters.n_epochs",
              "hyperparameters.batch_size", "hyperparameters.learning_rate_multiplier", "hyperparameters.beta", "method", "method.type",
              "method.supervised", "method.supervised.hyperparameters", "method.supervised.hyperparameters.n_epochs",
              "method.dpo.hyperparameters.beta"]
CHAT_FIELDS = ["model", "messages", "messages.0", "messages.0.role", "messages.0.content", "temperature", "top_p", "max_tokens",
               "max_completion_tokens", "stop", "seed", "n", "stream", "stream_options"]
RAW_BODIES = [b"", b"{", b"[]", b"null", b"1e999", b'{"model": 1e999}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b'{"messages": NaN}']


def with_value(body, dotted, value):
    body = json.loads(json.dumps(body))
    *parents, last = dotted.split(".")
    node = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            return body
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


def fuzz_requests(seed: int, count: int):
    """``count`` malformed requests: a valid job or chat body with one field set to an odd value, raw bodies
    that are no JSON object, and odd ids and queries on the other routes."""
    rng = random.Random(seed)
    job = {"model": "tiny", "training_file": "file-doesnotexist", "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}}
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    routes = ["/fine_tuning/jobs/{}", "/fine_tuning/jobs/{}/events", "/fine_tuning/jobs/{}/checkpoints", "/files/{}", "/files/{}/content",
              "/models/{}"]
    for _ in range(count):
        kind = rng.random()
        value = rng.choice(ODD_VALUES)
        if kind < 0.35:
            yield "POST", "/fine_tuning/jobs", json.dumps(with_value(job, rng.choice(JOB_FIELDS), value)).encode("utf-8", "surrogatepass")
        elif kind < 0.7:
            body = with_value(chat, rng.choice(CHAT_FIELDS), value)
            if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool) and body["max_tokens"] > 1:
                body["max_tokens"] = 1  # an odd value that happens to be valid must not start a long answer
            yield "POST", "/chat/completions", json.dumps(body).encode("utf-8", "surrogatepass")
        elif kind < 0.8:
            yield "POST", rng.choice(["/fine_tuning/jobs", "/chat/completions"]), rng.choice(RAW_BODIES)
        elif kind < 0.9:
            odd = rng.choice(["x", "ftjob-%2e%2e", "..%2F..%2Fetc", "%00", "a" * 300, "%ff", "ft:tiny:acme::12345678"])
            yield rng.choice(["GET", "DELETE"]), rng.choice(routes).format(odd), None
        else:
            query = rng.choice(["limit=0", "limit=1e3", "limit=", "after=%00", "order=up", "limit=99999999999999999999", "purpose=%ff"])
            yield "GET", rng.choice(["/fine_tuning/jobs", "/files", "/models"]) + "?" + query, None


def test_hundreds_of_malformed_requests_get_4xx_envelopes_and_no_traceback(server, key, client):
    answered = 0
    for method, path, body in fuzz_requests(seed=14, count=300):
        status, answer = send(server, key, method, path, body)
        assert status < 500, (method, path, body[:300] if body else None, answer)
        if status >= 400:
            assert isinstance(answer, dict) and set(answer["error"]) >= {"message", "type", "param", "code"}, (path, answer)
        answered += 1
    assert answered == 300
    assert [model.id for model in client.models.list().data] == ["smollm2-135m-instruct", "tiny"]  # still answering
    log = (server.data_dir.parent / f"server-{server.port}.log").read_text(errors="replace")
    assert "Traceback" not in log


def test_malformed_json_names_the_place_not_a_param(server, key):
    status, answer = send(server, key, "POST", "/fine_tuning/jobs", b'{"model": "tiny",, }')
    assert status == 400 and answer["error"]["param"] is None and answer["error"]["code"] == "invalid_json"
    assert "not valid JSON" in answer["error"]["message"] and "at character" in answer["error"]["message"]


def test_a_file_whose_name_does_not_say_its_format_is_read_by_its_content(client, server, tmp_path):
    from test_serve import wait_for

    rows = "".join(json.dumps(chat, ensure_ascii=False) + "\n" for chat in distinct_chats(12))
    for name in ("train", "train.txt", "x" * 255):
        (tmp_path / "upload").write_text(rows, encoding="utf-8")
        with open(tmp_path / "upload", "rb") as handle:
            uploaded = client.files.create(file=(name, handle), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
        job = wait_for(client, job.id, statuses=("queued", "running", "failed", "succeeded"))
        assert job.status != "failed", job.error
        client.fine_tuning.jobs.cancel(job.id)


def test_a_bad_file_fails_its_job_naming_a_line_and_no_server_path(client, server, tmp_path):
    from test_serve import wait_for

    plain = tmp_path / "notes.jsonl"
    plain.write_text("\n".join(f"just a line of text {i}" for i in range(16)) + "\n", encoding="utf-8")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, plain).id)
    failed = wait_for(client, job.id)
    assert failed.status == "failed" and "line 1" in failed.error.message, failed.error
    assert str(server.data_dir) not in failed.error.message


def test_deleting_a_file_a_running_job_uses_is_409(client, tmp_path):
    data = upload(client, write_jsonl(tmp_path / "d.jsonl", distinct_chats(12)))
    job = client.fine_tuning.jobs.create(model="tiny", training_file=data.id)
    with pytest.raises(openai.ConflictError) as error:
        client.files.delete(data.id)
    assert job.id in error.value.body["message"]
    client.fine_tuning.jobs.cancel(job.id)
    assert client.files.delete(data.id).deleted


def test_a_job_failure_shows_file_ids_not_server_paths(tmp_path):
    from togi.serve.jobs import job_directory, user_message

    data_dir = tmp_path / "data"
    job = {"id": "ftjob-abc", "training_file": "file-123", "internal": {"paths": {"training_file": str(data_dir / "files" / "file-123.jsonl")}}}
    error = ValueError(f"{data_dir / 'files' / 'file-123.jsonl'}: line 3: bad\nmore detail\n in {job_directory(data_dir, 'ftjob-abc')}/run")
    assert user_message(error, job, data_dir) == "file-123: line 3: bad"
    assert str(data_dir) not in user_message(RuntimeError(f"cannot write {job_directory(data_dir, 'ftjob-abc')}/run"), job, data_dir)


def test_a_jobs_recipe_is_built_as_values_so_any_path_or_model_name_survives(tmp_path):
    from togi.config import PreferenceConfig
    from togi.serve.jobs import train_config

    job = {"id": "ftjob-x", "method": {"type": "dpo"}, "seed": 3,
           "hyperparameters": {"batch_size": 2, "n_epochs": 1, "learning_rate_multiplier": 2, "beta": 0.2},
           "internal": {"n_examples": 10, "model_reference": "models/a: b=c", "paths": {"training_file": str(tmp_path / "x=y: [z].jsonl")}}}
    config = train_config(job, tmp_path)
    assert isinstance(config, PreferenceConfig) and config.model == "models/a: b=c"
    assert str(config.data.train_file) == str(tmp_path / "x=y: [z].jsonl") and config.data.val_ratio == 0
    assert (config.preference.beta, config.training.seed, config.monitoring.eval_every) == (0.2, 3, 5)
