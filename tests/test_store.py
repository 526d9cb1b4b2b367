"""The server's store, one contract for both backends: SQLite (the embedded default) and PostgreSQL (several API
replicas on one database). PostgreSQL runs for real, from Debian's binaries in a temporary directory
(``postgres_server.py``); where it cannot start, its cases are skipped with the reason."""

from __future__ import annotations

import threading

import pytest

from togi.serve.store import SQLiteStore, new_id


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        yield SQLiteStore(tmp_path / "togi.db")
        return
    from togi.serve.postgres_store import PostgresStore

    url = request.getfixturevalue("postgres_url")
    opened = PostgresStore(url)
    with opened._engine.begin() as connection:  # each test starts from an empty store
        connection.execute(opened._text("TRUNCATE records, api_keys"))
    yield opened
    opened.close()


def job(status: str = "queued") -> dict:
    return {"id": new_id("ftjob"), "object": "fine_tuning.job", "status": status, "name": "レビュー分類 [llama]"}


def test_records_read_back_newest_first_and_only_by_their_organization(store):
    first, second, other = job(), job("running"), job()
    store.put("job", first, "acme")
    store.put("job", second, "acme")
    store.put("job", other, "globex")
    assert store.get("job", first["id"], "acme") == first and store.get("job", first["id"], "globex") is None
    assert [r["id"] for r in store.list("job", "acme")] == [second["id"], first["id"]]
    assert [r["id"] for r in store.list("job", where={"status": "running"})] == [second["id"]]
    event = {"id": new_id("ftevent"), "message": "始めました"}
    store.put("event", event, "acme", parent=first["id"])
    assert store.list("event", parent=first["id"]) == [event] and store.list("event", parent=second["id"]) == []
    store.delete("job", other["id"])
    assert store.get("job", other["id"]) is None


def test_keys_name_their_organization_and_are_stored_hashed(store):
    assert not store.has_keys()
    key = store.create_key("acme")
    assert store.has_keys() and store.organization_of_key(key) == "acme" and store.organization_of_key(key + "x") is None


def test_update_changes_fields_and_a_missing_record_is_a_key_error(store):
    record = store.put("job", job(), "acme")
    assert store.update("job", record["id"], status="running", trained_tokens=12)["trained_tokens"] == 12
    assert store.get("job", record["id"])["status"] == "running"
    with pytest.raises(KeyError):
        store.update("job", "ftjob-none", status="failed")


def test_of_many_claims_on_one_queued_job_exactly_one_wins(store):
    """What keeps two replicas from starting one job: each claims it queued -> running; one claim succeeds."""
    record = store.put("job", job(), "acme")
    winners: list[int] = []
    start = threading.Barrier(8)

    def claim(number: int) -> None:
        start.wait()
        if store.claim("job", record["id"], {"status": "queued"}, status="running", worker=number) is not None:
            winners.append(number)

    threads = [threading.Thread(target=claim, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1 and store.get("job", record["id"])["worker"] == winners[0]
    assert store.claim("job", "ftjob-none", {"status": "queued"}, status="running") is None


def test_concurrent_updates_of_one_record_lose_nothing(store):
    record = store.put("job", {**job(), "counts": {}}, "acme")

    def count(name: str) -> None:
        for _ in range(10):
            while True:  # read, then write only if nobody changed it in between: the pattern claim makes safe
                current = store.get("job", record["id"])
                if store.claim("job", record["id"], {"counts": current["counts"]},
                               counts={**current["counts"], name: current["counts"].get(name, 0) + 1}):
                    break

    threads = [threading.Thread(target=count, args=(name,)) for name in ("a", "b", "c")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("job", record["id"])["counts"] == {"a": 10, "b": 10, "c": 10}


def test_replicas_starting_together_migrate_the_database_once(postgres_url):
    from togi.serve.postgres_store import PostgresStore

    stores: list[PostgresStore] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            stores.append(PostgresStore(postgres_url))
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(stores) == 4
    with stores[0]._engine.connect() as connection:
        assert connection.execute(stores[0]._text("SELECT version_num FROM alembic_version")).scalars().all() == ["0001"]
    for opened in stores:
        opened.close()


def test_a_restarted_replica_fails_only_its_own_interrupted_evaluations(store):
    from togi.serve.evaluations import fail_interrupted

    def evaluation(replica: str | None) -> str:
        record = {"id": new_id("eval"), "object": "togi.evaluation", "status": "running", "created_at": 1,
                  "internal": {"replica": replica} if replica else {}}
        return store.put("evaluation", record, "acme")["id"]

    mine, theirs, from_before_replicas = evaluation("node-a"), evaluation("node-b"), evaluation(None)
    fail_interrupted(store, "node-a")
    assert store.get("evaluation", mine)["status"] == "failed"
    assert "stopped during the evaluation" in store.get("evaluation", mine)["error"]["message"]
    assert store.get("evaluation", from_before_replicas)["status"] == "failed"
    assert store.get("evaluation", theirs)["status"] == "running"  # node-b is still evaluating it
