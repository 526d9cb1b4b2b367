"""The web dashboard of `togi serve`, used as a person would: Debian's Chromium, headless, driven by Playwright,
against a real server on loopback training a tiny model. Each test keeps screenshots of the pages it saw in
its output folder (printed; copy them elsewhere with TOGI_SCREENSHOT_DIR=DIR). Skipped with a reason where
Playwright or Chromium is missing (`make setup-dev` installs both)."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import distinct_chats, write_jsonl
from test_serve import Server, togi

playwright_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (make setup-dev installs it)")
expect = playwright_api.expect
CHROMIUM = os.environ.get("TOGI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (make setup-dev installs Debian's chromium as root)"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SLOW = 240_000  # ms: a job on 2 busy cores


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    running = Server(tmp_path_factory.mktemp("dashboard") / "data", tiny_model_dir).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def keys(server):
    return {org: togi("serve", "keys", "create", "--org", org, "--data-dir", server.data_dir).stdout.strip() for org in ("acme", "rival")}


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dashboard-screenshots")
    yield folder
    print(f"\ndashboard screenshots: {folder}")
    if os.environ.get("TOGI_SCREENSHOT_DIR"):
        shutil.copytree(folder, os.environ["TOGI_SCREENSHOT_DIR"], dirs_exist_ok=True)


class Visitor:
    """One browser tab signed in (or not) with one key; it records the page's script errors."""

    def __init__(self, browser, server: Server, shots: Path) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.base, self.shots = f"http://127.0.0.1:{server.port}", shots

    def open(self, route: str = "") -> Visitor:
        self.page.goto(f"{self.base}/{route}")
        return self

    def sign_in(self, key: str) -> Visitor:
        self.open()
        self.page.fill("#api-key", key)
        self.page.click("#signin button[type=submit]")
        self.page.wait_for_selector("#jobs-table")
        return self

    def go(self, route: str) -> None:
        self.page.goto(f"{self.base}/{route}")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


@pytest.fixture
def visitor(browser, server, shots):
    opened = Visitor(browser, server, shots)
    yield opened
    opened.context.close()
    assert not opened.errors, f"the page's scripts failed: {opened.errors}"


@pytest.fixture(scope="module")
def job_from_the_page(browser, server, keys, shots, tmp_path_factory):
    """Sign in, upload a training and a validation file, create a job from the form, and watch its page while
    it trains: the number of points on the loss curve, sampled while the job runs, and the job's id."""
    folder = tmp_path_factory.mktemp("dashboard-data")
    training = write_jsonl(folder / "train.jsonl", distinct_chats(40))
    validation = write_jsonl(folder / "valid.jsonl", distinct_chats(50)[40:])
    tab = Visitor(browser, server, shots).sign_in(keys["acme"])
    page = tab.page
    tab.shot("1-jobs-empty")
    page.click("nav >> text=New job")
    page.set_input_files("#training-file", str(training))
    expect(page.locator("#auto-resolved")).to_contain_text("for 40 examples", timeout=60_000)
    resolved_text = page.inner_text("#auto-resolved")
    page.set_input_files("#validation-file", str(validation))
    expect(page.locator("#validation-file-status")).to_contain_text("uploaded as", timeout=60_000)
    page.fill("#n_epochs", "8")
    page.fill("#batch_size", "1")
    page.fill("#learning_rate_multiplier", "10")
    page.select_option("#base-model", "tiny")
    page.fill("#suffix", "shop")
    tab.shot("2-new-job")
    page.click("#create-job")
    page.wait_for_selector("#loss-chart")
    job_id = page.url.rsplit("/", 1)[-1]
    chart = page.locator("#loss-chart").element_handle()  # the same node all along: the page updates, it never reloads
    samples = []
    deadline = time.time() + SLOW / 1000
    while time.time() < deadline:
        status = page.inner_text("h1 .badge")
        samples.append((status, int(page.get_attribute("#loss-chart", "data-points"))))
        if status == "running" and samples[-1][1] > 0 and len([s for s in samples if s[0] == "running" and s[1] > 0]) == 2:
            tab.shot("3-job-running")
        if status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.25)
    time.sleep(2)  # the last poll: checkpoints, result file, evaluations
    tab.shot("4-job-succeeded")
    observed = {"job_id": job_id, "samples": samples, "resolved_text": resolved_text, "same_chart_node": chart.is_visible(),
                "final_points": int(page.get_attribute("#loss-chart", "data-points")), "errors": list(tab.errors)}
    tab.context.close()
    return observed


def client_checkpoints(server, keys, job_id: str) -> list:
    return list(server.client(keys["acme"]).fine_tuning.jobs.checkpoints.list(job_id, limit=100))


def test_a_wrong_key_is_refused_with_the_servers_words_and_nothing_else_shows(visitor):
    page = visitor.open().page
    page.fill("#api-key", "sk-togi-not-a-key")
    page.click("#signin button[type=submit]")
    expect(page.locator("#signin .error")).to_contain_text("Incorrect API key")
    assert page.locator("#nav").is_hidden() and page.locator("#jobs-table").count() == 0
    visitor.shot("0-sign-in-refused")


def test_a_job_created_from_the_page_trains_while_its_curve_gains_points(job_from_the_page, server, keys):
    observed = job_from_the_page
    assert not observed["errors"]
    assert observed["resolved_text"].startswith("auto resolves to: 3 epochs · batch size 1")  # 40 examples: at least 100 example passes
    running = [points for status, points in observed["samples"] if status == "running"]
    assert observed["samples"][-1][0] == "succeeded", observed["samples"]
    assert len(set(running)) >= 2 and running == sorted(running), f"the curve did not grow while the job ran: {observed['samples']}"
    job = server.client(keys["acme"]).fine_tuning.jobs.retrieve(observed["job_id"])
    assert job.hyperparameters.n_epochs == 8 and job.hyperparameters.batch_size == 1 and job.suffix == "shop"
    assert observed["final_points"] == 320 + 8  # a training loss per step, a validation loss per epoch
    assert observed["same_chart_node"], "the job page was rebuilt instead of updated"


def test_the_job_page_shows_checkpoints_events_the_result_file_and_the_model_id(job_from_the_page, visitor, server, keys):
    job = server.client(keys["acme"]).fine_tuning.jobs.retrieve(job_from_the_page["job_id"])
    page = visitor.sign_in(keys["acme"]).page
    expect(page.locator(f"#jobs-table tr[data-job='{job.id}']")).to_contain_text("succeeded")
    visitor.shot("1-jobs")
    page.click(f"#jobs-table a:text('{job.id}')")
    expect(page.locator("h1 .badge")).to_have_text("succeeded")
    expect(page.locator(".facts .model-id")).to_have_text(job.fine_tuned_model)
    expect(page.locator("#checkpoints tbody tr").first).to_contain_text(f"{job.fine_tuned_model}:ckpt-step-320")  # newest first
    assert page.locator("#checkpoints tbody tr").count() == len(client_checkpoints(server, keys, job.id))
    expect(page.locator("#events")).to_contain_text("The job has successfully completed")
    assert page.locator("#lr-chart").get_attribute("data-points") == "320" and page.locator("#speed-chart").get_attribute("data-points") != "0"
    with page.expect_download() as download:
        page.click("#result-file")
    assert Path(download.value.path()).read_text().startswith("step,train_loss,train_accuracy,valid_loss")
    page.click(".facts button.copy")
    expect(page.locator(".facts button.copy")).to_have_text("copied")


def test_a_late_reply_for_the_page_left_behind_never_overwrites_the_page_shown(job_from_the_page, visitor, keys):
    """Signing in opens the job list; going straight to a job before the list's reply arrives must leave the
    job's page in place when that reply lands late (it used to replace the page with an error box)."""
    page = visitor.page
    held = []
    page.route("**/v1/fine_tuning/jobs?*", lambda route: held.append(route))  # held: no reply until released
    visitor.sign_in(keys["acme"])
    expect(page.locator("#jobs-table")).to_be_visible()
    visitor.go(f"#/jobs/{job_from_the_page['job_id']}")
    expect(page.locator("text=Chat with it")).to_be_visible()
    assert held, "the job list never asked for its jobs"
    with page.expect_response(lambda response: "/v1/fine_tuning/jobs?" in response.url):
        for route in held:
            route.continue_()
    page.wait_for_timeout(500)  # the late reply's handler has run by now
    expect(page.locator("text=Chat with it")).to_be_visible()
    assert page.locator("#main .error").count() == 0 and page.locator("#jobs-table").count() == 0


def test_the_playground_streams_answers_from_the_base_and_the_tuned_model_side_by_side(job_from_the_page, visitor, server, keys):
    client = server.client(keys["acme"])
    tuned = client.fine_tuning.jobs.retrieve(job_from_the_page["job_id"]).fine_tuned_model
    page = visitor.sign_in(keys["acme"]).page
    visitor.go(f"#/jobs/{job_from_the_page['job_id']}")
    page.click("text=Chat with it")
    expect(page.locator("#model-b")).to_have_value(tuned)
    expect(page.locator("#model-a")).to_have_value("tiny")
    assert page.locator("#model-a optgroup[label=checkpoints] option").count() == len(client_checkpoints(server, keys, job_from_the_page["job_id"]))
    prompt = "質問その3: 商品番号23757の在庫と配送予定日を教えてください。"
    page.fill("#prompt", prompt)
    page.fill("#max-tokens", "12")
    page.click("#compare")
    for side in ("a", "b"):
        expect(page.locator(f"#answer-{side}")).to_have_attribute("data-done", "true", timeout=SLOW)
    visitor.shot("5-playground")
    for side, model in (("a", "tiny"), ("b", tuned)):
        streamed = page.inner_text(f"#answer-{side}")
        assert int(page.get_attribute(f"#answer-{side}", "data-chunks")) > 1, "the answer came in one piece, not streamed"
        expected = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=12, temperature=0)
        assert streamed == expected.choices[0].message.content  # greedy: the page shows what the API answers
        assert "finish: length" in page.inner_text(f"#stats-{side}") or expected.choices[0].finish_reason == "stop"


def test_an_evaluation_started_from_the_page_shows_the_metric_table_and_the_report(job_from_the_page, visitor, keys, server, tmp_path):
    test_file = write_jsonl(tmp_path / "test.jsonl", distinct_chats(6))
    page = visitor.sign_in(keys["acme"]).page
    visitor.go(f"#/evaluate?job={job_from_the_page['job_id']}")
    page.set_input_files(".eval-form input[type=file]", str(test_file))
    expect(page.locator(".eval-form")).to_contain_text("uploaded as", timeout=60_000)
    page.fill("#eval-limit", "4")
    page.click(".eval-form button[type=submit]")
    card = page.locator(".evaluation").first
    expect(card).to_have_attribute("data-status", "succeeded", timeout=SLOW)
    assert "4 examples" in card.inner_text()
    for metric in ("rougeL", "bleu", "mean_token_loss"):
        assert card.locator(f"tr[data-metric={metric}] td").count() == 4
    card.locator(".open-report").click()
    frame = page.frame_locator("iframe.report-frame")
    expect(frame.locator("h1")).to_contain_text("togi evaluation")
    report = page.get_attribute("iframe.report-frame", "srcdoc")
    assert str(server.data_dir) not in report and "test.jsonl" in report  # the caller's names, not the server's paths
    visitor.shot("6-evaluation")
    visitor.go(f"#/jobs/{job_from_the_page['job_id']}")  # the job page links the same evaluation
    expect(page.locator("#evaluations .evaluation[data-status=succeeded]")).to_have_count(1)


def test_a_bad_training_file_is_named_on_the_form_and_its_job_fails_in_plain_words(visitor, keys, tmp_path):
    unreadable = tmp_path / "broken.jsonl"
    unreadable.write_text(json.dumps(distinct_chats(1)[0], ensure_ascii=False) + "\n{not json\n", encoding="utf-8")
    page = visitor.sign_in(keys["acme"]).page
    visitor.go("#/new")
    page.set_input_files("#training-file", str(unreadable))
    expect(page.locator("#auto-resolved .error")).to_contain_text("line 2")
    too_few = write_jsonl(tmp_path / "few.jsonl", distinct_chats(3))
    page.set_input_files("#training-file", str(too_few))
    expect(page.locator("#auto-resolved")).to_contain_text("for 3 examples")
    page.click("#create-job")
    expect(page.locator("h1 .badge")).to_have_text("failed", timeout=60_000)
    expect(page.locator(".error")).to_contain_text("The job failed: Training file")
    visitor.shot("7-failed-job")


def test_a_running_job_is_paused_resumed_and_cancelled_from_its_page(visitor, server, keys, tmp_path):
    client = server.client(keys["acme"])
    with open(write_jsonl(tmp_path / "long.jsonl", distinct_chats(48)), "rb") as handle:
        training = client.files.create(file=handle, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=training.id,
                                         method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 10, "batch_size": 1}}})
    page = visitor.sign_in(keys["acme"]).page
    visitor.go(f"#/jobs/{job.id}")
    expect(page.locator("h1 .badge")).to_have_text("running", timeout=SLOW)
    page.click("#pause-job")
    expect(page.locator("h1 .badge")).to_have_text("paused")
    page.click("#resume-job")
    expect(page.locator("h1 .badge")).not_to_have_text("paused")
    page.click("#cancel-job")
    expect(page.locator("h1 .badge")).to_have_text("cancelled")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    for said in ("The job was paused", "The job was resumed", "The job was cancelled"):
        expect(page.locator("#events")).to_contain_text(said)
    assert page.locator("#events tbody tr").count() == len(set(page.locator("#events tbody tr").all_inner_texts())), "an event shown twice"


def test_another_organization_sees_none_of_it(job_from_the_page, visitor, keys, server):
    page = visitor.sign_in(keys["rival"]).page
    expect(page.locator("#jobs-table")).to_contain_text("No jobs yet")
    expect(page.locator("#who-org")).to_have_text("organization: rival")
    visitor.go(f"#/jobs/{job_from_the_page['job_id']}")
    expect(page.locator("main .error")).to_contain_text(f"No such job: {job_from_the_page['job_id']}")
    visitor.go("#/playground")
    expect(page.locator("#model-a")).to_be_visible()
    options = page.locator("#model-a option").all_inner_texts()
    assert options == ["smollm2-135m-instruct", "tiny"], options  # the base models only: no fine-tuned model or checkpoint of acme's
    visitor.go("#/evaluate")
    expect(page.locator("main .notice")).to_contain_text("No fine-tuned model yet")
    visitor.shot("8-other-organization")


def test_the_page_is_served_with_a_strict_policy_and_no_ui_turns_it_off(server, tmp_path, tiny_model_dir, keys):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/") as response:
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-eval" not in policy
        assert b"uPlot.iife.min.js" in response.read()
    headless = Server(tmp_path / "data", tiny_model_dir, "--no-ui").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{headless.port}/")
        assert refused.value.code == 404
        urllib.request.urlopen(f"http://127.0.0.1:{headless.port}/openapi.json")  # the API is still there
    finally:
        headless.stop()
