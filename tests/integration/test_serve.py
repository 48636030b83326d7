"""A participant brought up the way an operator does it, on a broker of its own: the
topology declared by `biox topology declare`, each participant run by `biox serve`, and
an encounter system that knows only docs/integration.md.

sv's matcher is left out (`--count query=0`): a partner that never answers, whose
queries time out after `BIOX_ANSWER_DEADLINE_S`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pika
import pytest

from biox.broker.deadletters import DeadLetterQueues
from biox.broker.held import held_results
from biox.broker.topology import PARKED_ARGUMENTS
from biox.dev.broker import LocalBroker
from biox.registry import Registry
from biox.settings import Settings
from biox.sim import galleries, plans
from biox.sim.processes import Workers, dev_env, free_port_runs, serve, wait_for_consumers
from biox.supervisor import read_status
from biox.wire import addresses, codec
from biox.wire.messages import EncounterResult, SubjectStatus

SEED = 77
SIZE = 1000
CODES = ["mx", "sv", "us"]
DEADLINE_S = 4
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "integration.md"

pytestmark = pytest.mark.integration


@dataclass
class Served:
    url: str
    settings: Settings
    env: dict[str, str]
    serve: Workers
    broker: LocalBroker

    def biox(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "biox", *args],
            env=self.env,
            cwd=self.settings.data_dir,  # not a clone: the defaults must work anywhere
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check:
            assert done.returncode == 0, done.stdout + done.stderr
        return done

    def status(self, code: str) -> dict:
        status = read_status(self.settings.data_dir / code / "serve.json")
        assert status is not None
        return status


def commenced(s: Served, code: str) -> bool:
    """Whether ``code`` holds itself and every partner it has an agreement with active."""
    rows = [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in s.biox("participants", "list", "-p", code).stdout.splitlines()
        if line.startswith("│")
    ]
    return bool(rows) and all(r[1] == "active" for r in rows if r[3] in ("yes", "(self)"))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("served")
    broker = LocalBroker().start()
    workers = Workers([])
    try:
        settings = Settings(amqp_url=broker.url, data_dir=data, retry_delays="1,2")
        env = dev_env(
            broker.url,
            settings,
            CODES,
            BIOX_ANSWER_DEADLINE_S=str(DEADLINE_S),
            BIOX_DEADLINE_CHECK_S="0.5",
        )
        # the registry a stranger gets: the example shipped in the package, everyone
        # pending until the readiness exchange below (§34)
        env.pop("BIOX_REGISTRY")
        s = Served(broker.url, settings, env, workers, broker)
        # before the topology: serve refuses to start workers that would wait forever
        refused = s.biox("serve", "-p", "us", check=False)
        said = " ".join(refused.stdout.split())
        assert refused.returncode == 2 and "biox topology declare" in said, said
        assert "declared" in s.biox("topology", "declare").stdout
        for code in CODES:
            galleries.build_gallery(settings, code, SIZE, SEED)
        ports = dict(zip(CODES, free_port_runs(3, 8, start=19410), strict=True))
        workers.processes = serve(
            CODES, env, data / "logs", extra={"sv": ["--count", "query=0"]}, metrics=ports
        ).processes
        wait_for_consumers(
            broker.url,
            [addresses.queue("us", k) for k in ("intake", "response", "audit")]
            + [addresses.queue("mx", "query")],
            workers,
        )
        for code in CODES:  # as the guide says, once every participant is served
            assert "readiness" in s.biox("participants", "ready", "-p", code).stdout
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(commenced(s, c) for c in CODES):
            time.sleep(0.5)
        assert all(commenced(s, c) for c in CODES)
        yield s
    finally:
        workers.stop(timeout=40)
        broker.stop()


def test_the_example_client_in_the_integration_guide_gets_its_result(served, tmp_path):
    """The guide's client, as a vendor would copy it, against participants run by
    `biox serve` alone: mx answers, sv (never answering) times out, the result completes."""
    text = GUIDE.read_text()
    code = re.search(
        r"<!-- example-client:start -->\n```python\n(.*?)```\n<!-- example-client:end -->",
        text,
        re.S,
    )
    assert code is not None
    assert not re.search(r"^\s*(from|import) biox", code.group(1), re.M)
    client = tmp_path / "example_client.py"
    client.write_text(code.group(1))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOX_")}
    done = subprocess.run(
        [
            sys.executable,
            str(client),
            "--url",
            served.url,
            "--participant",
            "us",
            "--timeout",
            "90",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("submitted example-")
    assert lines[-1].startswith("revision ") and "complete" in lines[-1]
    assert "mx=no_match" in lines[-1]  # a random face: a stranger to mx's gallery
    assert "sv=timed_out (no_answer)" in lines[-1]


def submit(served: Served, reply_to: str, citizenships: list[str]) -> str:
    registry = Registry.load(served.settings.registry)
    planned = plans.single(registry, "us", 10_000_000 + int(uuid.uuid4().int % 1000), SEED)
    planned.submit.subject_status = SubjectStatus(citizenships=citizenships)
    out = codec.to_submissions(
        planned.submit,
        participant="us",
        message_id=str(uuid.uuid4()),
        correlation_id=planned.encounter_id,
        reply_to=reply_to,
    )
    from biox.broker.publisher import publish_once

    publish_once(served.url, [out], name="test-encounter-system")
    return planned.encounter_id


NODE_CLIENT = GUIDE.parents[1] / "examples" / "node"


@pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="Node.js is not here"
)
def test_a_node_encounter_system_written_from_the_docs_gets_a_result_every_one_valid(
    served, tmp_path
):
    """Issue 21 (7): an encounter system in another language (Node.js: amqplib,
    @msgpack/msgpack, ajv's 2020-12 validator), from the guide and schemas/ alone,
    installed from the npm registry at its locked versions, submits and validates every
    result it receives against encounter.result.v1.json."""
    work = tmp_path / "node"
    shutil.copytree(NODE_CLIENT, work, ignore=shutil.ignore_patterns("node_modules"))
    try:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"the npm registry did not answer: {e}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIOX_")}
    schemas = GUIDE.parents[1] / "schemas"
    done = subprocess.run(
        ["node", "client.mjs", "--url", served.url, "--schemas", str(schemas), "--timeout", "90"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("submitted example-node-")
    assert lines[1].startswith("revision 1: pending") and "mx=pending" in lines[1]
    assert lines[-1].startswith("revision ") and "complete" in lines[-1]
    assert "mx=no_match" in lines[-1] and "sv=timed_out" in lines[-1]


def test_results_wait_in_the_held_queue_until_the_reply_queue_exists(served):
    """A reply queue misspelt or not yet declared: the results wait, an operator sees
    them, and sends them on once the queue exists; a Salvadoran subject is shown with
    sv skipped, not missing."""
    reply = f"us.replies.late-{uuid.uuid4().hex[:6]}"
    encounter_id = submit(served, reply, ["sv"])
    held = ""
    deadline = time.monotonic() + 60
    while encounter_id not in held and time.monotonic() < deadline:
        time.sleep(0.5)
        held = served.biox("encounters", "held", "-p", "us").stdout
    assert encounter_id in held and reply in held
    shown = json.loads(served.biox("encounters", "show", encounter_id, "-p", "us", "--json").stdout)
    assert [(o["partner"], o["status"]) for o in shown["outcomes"]] == [
        ("mx", "no_match"),
        ("sv", "skipped"),
    ]
    assert shown["outcomes"][1]["reason_code"] == "excluded_citizen"

    # an operator looks as often as needed: more looks than RabbitMQ 4's default limit of
    # 20 deliveries on a quorum queue, and the results are all still there
    dlqs = DeadLetterQueues(served.url)
    try:
        for _ in range(25):
            assert len([d for d in held_results(dlqs, "us") if d.routing_key == reply]) == 2
    finally:
        dlqs.close()
    early = served.biox("encounters", "redeliver", "-p", "us").stdout
    assert f"2 still held: reply queue {reply} does not exist" in early, early
    conn = pika.BlockingConnection(pika.URLParameters(served.url))
    try:
        ch = conn.channel()
        # quorum with a limit no look reaches: declaring it so again is refused otherwise
        ch.queue_declare(
            addresses.held_results_queue("us"), durable=True, arguments=PARKED_ARGUMENTS
        )
        ch.queue_declare(reply, durable=True, arguments={"x-queue-type": "quorum"})
        ch.queue_bind(reply, addresses.results("us"), reply)
        assert "sent on" in served.biox("encounters", "redeliver", "-p", "us").stdout
        got: list[EncounterResult] = []
        deadline = time.monotonic() + 30
        # both revisions were held: 1 (sent with the query) and 2 (mx's answer)
        while len(got) < 2 and time.monotonic() < deadline:
            method, props, body = ch.basic_get(reply, auto_ack=True)
            if method is None:
                conn.sleep(0.2)
                continue
            got.append(codec.decode_body(EncounterResult, props.headers["biox-schema"], body))
        assert {r.encounter_id for r in got} == {encounter_id}
        newest = max(got, key=lambda r: r.revision)
        assert (newest.revision, newest.status.value) == (2, "complete")
        assert encounter_id not in served.biox("encounters", "held", "-p", "us").stdout
    finally:
        conn.close()


def test_serve_restarts_a_sigkilled_worker_and_health_shows_it(served, tmp_path):
    before = {w["kind"]: w for w in served.status("us")["workers"]}
    assert served.biox("health", "-p", "us").returncode == 0
    os.kill(before["intake"]["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    intake = before["intake"]
    while time.monotonic() < deadline:
        intake = next(w for w in served.status("us")["workers"] if w["kind"] == "intake")
        if intake["restarts"] == 1 and intake["pid"]:
            break
        time.sleep(0.3)
    assert intake["restarts"] == 1 and intake["last_exit"] == -signal.SIGKILL
    assert intake["pid"] != before["intake"]["pid"]
    others = {w["kind"]: w["pid"] for w in served.status("us")["workers"] if w["kind"] != "intake"}
    assert others == {k: w["pid"] for k, w in before.items() if k != "intake"}  # untouched
    wait_for_consumers(served.url, [addresses.queue("us", "intake")], served.serve)
    health = served.biox("health", "-p", "us", "--wait", "20")
    assert "intake-1" in health.stdout
    # and the restarted intake takes submissions again
    test_the_example_client_in_the_integration_guide_gets_its_result(served, tmp_path)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a /metrics page, by name and labels (prometheus_client's parser)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        text = page.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def count(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def test_metrics_are_scraped_over_http_and_count_the_messages_sent(served):
    """Scraped from the workers `biox serve` started: every submission counted once in,
    every query once out and every answer once back; the broker's plugin shows queues."""
    ports = {w["kind"]: w["metrics_port"] for w in served.status("us")["workers"]}
    mx_query = next(
        w["metrics_port"] for w in served.status("mx")["workers"] if w["kind"] == "query"
    )
    before = {k: scrape(p) for k, p in ports.items()} | {"mx": scrape(mx_query)}
    # Salvadorans: sv is skipped (§4a), so each is one query to mx and one answer back
    sent = [submit(served, f"us.replies.m-{uuid.uuid4().hex[:6]}", ["sv"]) for _ in range(3)]

    def answered() -> bool:
        now = scrape(ports["response"])
        got = count(now, "biox_messages_in_total", kind="response")
        return got - count(before["response"], "biox_messages_in_total", kind="response") >= 3

    deadline = time.monotonic() + 60
    while not answered() and time.monotonic() < deadline:
        time.sleep(0.5)
    after = {k: scrape(p) for k, p in ports.items()} | {"mx": scrape(mx_query)}

    def delta(worker: str, name: str, **labels: str) -> float:
        return count(after[worker], name, **labels) - count(before[worker], name, **labels)

    assert (
        delta("intake", "biox_messages_in_total", kind="encounter.submit", outcome="queried") == 3
    )
    assert delta("intake", "biox_messages_out_total", kind="query") == 3
    assert delta("mx", "biox_messages_in_total", kind="query") == 3
    assert delta("mx", "biox_messages_out_total", kind="response") == 3
    assert delta("mx", "biox_matcher_search_seconds_count") >= 1
    assert count(after["mx"], "biox_gallery_identities") == SIZE
    assert delta("response", "biox_messages_in_total", kind="response") == 3
    assert delta("response", "biox_messages_out_total", kind="encounter.result") == 3
    assert delta("intake", "biox_handler_seconds_count", kind="encounter.submit") >= 1
    assert delta("intake", "biox_end_to_end_seconds_count", kind="encounter.submit") == 3
    assert count(after["review"], "biox_review_backlog_cases") == 0
    health = scrape(served.status("us")["workers"][0]["metrics_port"] - 1)  # serve's own
    assert count(health, "biox_worker_up", kind="intake") == 1
    assert count(health, "biox_worker_restarts_total", kind="intake") >= 0
    # queue depths from the broker's own Prometheus plugin, per queue
    import urllib.request

    broker = served.broker.state
    assert broker is not None
    with urllib.request.urlopen(broker.metrics_url, timeout=10) as page:
        text = page.read().decode()
    for family in ("rabbitmq_queue_messages_ready", "rabbitmq_queue_messages_unacked"):
        # what deploy/grafana/biox.json queries: queue depths, and the links' in flight
        assert any(
            line.startswith(family + "{") and 'queue="us.intake"' in line
            for line in text.splitlines()
        ), family
    assert sent  # the three encounters were submitted


def conformance(served: Served, sized: bool = True) -> tuple[int, dict[str, dict]]:
    """``sized``: say the partners' gallery size; without it the kit reads each one's
    database under BIOX_DATA_DIR (issue 21 (3))."""
    size = ["--gallery-size", str(SIZE)] if sized else []
    done = served.biox(
        "conformance",
        "-p",
        "us",
        "--amqp-url",
        served.url,
        "--seed",
        str(SEED),
        *size,
        "--timeout",
        "90",
        "--json",
        check=False,
    )
    cases = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, {c["case"]: c for c in cases}


def test_conformance_names_the_failing_cases_then_passes_once_the_partner_answers(served):
    """With sv's matcher not running, the kit fails the cases where sv must answer and
    names them; with a matcher for sv started, every case passes."""
    code, cases = conformance(served)
    assert code == 1
    failed = {name: c["got"] for name, c in cases.items() if not c["passed"]}
    mated = next(name for name in cases if name.startswith("mated: a capture of MX-"))
    assert set(failed) == {mated, "stranger", "skipped: a citizen of mx"}, failed
    assert all(got == "sv timed_out (no_answer)" for got in failed.values()), failed
    assert len(cases) == 14

    logs = served.settings.data_dir / "logs" / "sv-query-extra.log"
    matcher = subprocess.Popen(
        [sys.executable, "-m", "biox", "worker", "query", "-p", "sv"],
        env=served.env,
        stdout=logs.open("ab"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_consumers(
            served.url, [addresses.queue("sv", "query")], Workers([("sv-query", matcher)])
        )
        code, cases = conformance(served, sized=False)
        assert code == 0, [c for c in cases.values() if not c["passed"]]
        assert len(cases) == 14 and all(c["passed"] for c in cases.values())
        assert cases["bad template: invalid_message (template as text)"]["got"].startswith(
            "refused invalid_message"
        )
    finally:
        matcher.send_signal(signal.SIGTERM)
        matcher.wait(30)
