"""How `bench.sovereign` measures the layout against the shared broker: its watch on the
links (``bench/links.py``: what it reads from a broker's Prometheus text, and what it
reports over a run, against a small HTTP server that answers as RabbitMQ's endpoint
does), and the two layouts taking turns (``bench.sovereign.in_turn``)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from bench.links import LinkWatch, read, summary

LINKS = ("us.link.mx", "us.link.sv")


def metrics(opened: int, unacked: int, ready: int) -> str:
    """RabbitMQ 3.10's text, per-object metrics on, trimmed to the families read and a
    few neighbours that must be skipped."""
    return "\n".join(
        [
            "# TYPE rabbitmq_connections_opened_total counter",
            "# HELP rabbitmq_connections_opened_total Total number of connections opened",
            f"rabbitmq_connections_opened_total {opened}",
            "rabbitmq_connections 6",
            "# TYPE rabbitmq_queue_messages_ready gauge",
            f'rabbitmq_queue_messages_ready{{vhost="/",queue="us.link.mx"}} {ready}',
            'rabbitmq_queue_messages_ready{vhost="/",queue="us.link.sv"} 0',
            'rabbitmq_queue_messages_ready{vhost="/",queue="us.intake"} 900',
            f'rabbitmq_queue_messages_unacked{{vhost="/",queue="us.link.mx"}} {unacked}',
            'rabbitmq_queue_messages_unacked{vhost="/",queue="us.link.sv"} 1',
            'rabbitmq_queue_messages_unacked{vhost="/",queue="us.audit"} 64',
            'rabbitmq_queue_messages_ready_total{vhost="/",queue="us.link.mx"} 77',
            "",
        ]
    )


def test_a_scrape_reads_the_connections_opened_and_only_the_link_queues():
    got = read(metrics(13, 4, 2), LINKS)
    assert got == {
        "rabbitmq_connections_opened_total": 13.0,
        "ready:us.link.mx": 2.0,
        "ready:us.link.sv": 0.0,
        "unacked:us.link.mx": 4.0,
        "unacked:us.link.sv": 1.0,
    }  # not us.intake's 900, us.audit's 64, nor a family that merely starts alike


def test_a_counter_split_by_label_is_summed():
    text = (
        'rabbitmq_connections_opened_total{protocol="amqp091"} 5\n'
        'rabbitmq_connections_opened_total{protocol="amqp10"} 2\n'
    )
    assert read(text, LINKS) == {"rabbitmq_connections_opened_total": 7.0}


def test_the_summary_counts_connections_opened_between_first_and_last_and_the_peaks():
    rows = [read(metrics(o, u, r), LINKS) for o, u, r in [(9, 0, 0), (11, 7, 3), (14, 2, 0)]]
    assert summary({"us": rows}, {"us": 2}) == {
        "us": {
            "scrapes": 3,
            "unanswered": 2,
            "connections_opened": 5,
            "link_unacked_max": 7,
            "link_ready_max": 3,
        }
    }
    assert summary({"mx": [{}]}) == {
        "mx": {
            "scrapes": 1,
            "unanswered": 0,
            "connections_opened": 0,
            "link_unacked_max": 0,
            "link_ready_max": 0,
        }
    }


@pytest.fixture
def endpoint():
    """A metrics endpoint whose answers the test moves on: each GET reads the next."""
    answers = [metrics(20, 0, 0), metrics(21, 5, 1), metrics(24, 9, 0), metrics(26, 0, 0)]
    served: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = answers[min(len(served), len(answers) - 1)].encode()
            served.append(1)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics", served
    server.shutdown()


def test_a_watch_scrapes_before_during_and_after_and_a_broker_down_is_counted(endpoint):
    url, served = endpoint
    watch = LinkWatch({"us": url, "mx": "http://127.0.0.1:9/metrics"}, LINKS, every_s=0.05)
    watch.start()
    while len(served) < 3:
        threading.Event().wait(0.01)
    got = watch.stop()
    assert got["us"]["scrapes"] == len(served) >= 4  # the first, the loop's, and the last
    assert got["us"]["connections_opened"] == 6  # 20 before, 26 after
    assert got["us"]["link_unacked_max"] == 9 and got["us"]["link_ready_max"] == 1
    assert got["us"]["unanswered"] == 0
    # every try at mx refused: reported, with nothing made up for it
    assert got["mx"] == {
        "scrapes": 0,
        "unanswered": len(served),
        "connections_opened": 0,
        "link_unacked_max": 0,
        "link_ready_max": 0,
    }


def test_two_layouts_take_turns_round_by_round_and_each_half_load_is_its_own(monkeypatch):
    """``bench.sovereign.in_turn``: A B, B A, A B saturated, then the half-load run in two
    halves, B A, A B, each at half its own layout's median round, and each layout's figures
    from its own rounds and halves alone."""
    from bench import hops as hops_mod
    from bench import run as bench_run
    from bench import sovereign as sv
    from bench.run import Run, Saturated

    calls: list[tuple[str, str, int, float]] = []
    speed = {"a": iter([300.0, 360.0, 330.0]), "b": iter([250.0, 200.0, 280.0])}

    def saturated_round(url, sizes, base, n, pids, audits, **connect):
        throughput = next(speed[url])
        calls.append(("round", url, n, 0.0))
        run = Run(n, n / throughput, [0.1] * n, 1 if url == "b" else 0, 0, {})
        return Saturated(run, throughput, {"w": 1.0 if url == "a" else 2.0}, 0, 0.0)

    def pipeline_run(url, sizes, base, n, rate, **connect):
        calls.append(("half", url, n, rate))
        return Run(n, 1.0, [0.2 if url == "a" else 0.4] * n, 0, 0, {f"{url}{n}": None})

    monkeypatch.setattr(sv, "saturated_round", saturated_round)
    monkeypatch.setattr(sv, "pipeline_run", pipeline_run)
    monkeypatch.setattr(sv, "workload", lambda size: ({}, []))
    monkeypatch.setattr(hops_mod, "of_run", lambda database, timed: sorted(timed))
    monkeypatch.setattr(bench_run, "ROUNDS", 3)
    settings = type("S", (), {"database_for": lambda self, code: code})()
    layouts = [sv.Layout(name, name, settings, {}, []) for name in ("a", "b")]

    got = sv.in_turn(layouts, 100, 2000)

    assert [(kind, who) for kind, who, _, _ in calls] == [
        ("round", "a"),
        ("round", "b"),
        ("round", "b"),
        ("round", "a"),
        ("round", "a"),
        ("round", "b"),
        ("half", "b"),
        ("half", "a"),
        ("half", "a"),
        ("half", "b"),
    ]
    halves = {(who, n, rate) for kind, who, n, rate in calls if kind == "half"}
    assert halves == {("a", 500, 165.0), ("b", 500, 125.0)}  # 1 000 each, at its median / 2
    assert got["a"]["throughput_qps"] == 330.0 and got["b"]["throughput_qps"] == 250.0
    assert got["a"]["rounds_throughput_qps"] == [300.0, 360.0, 330.0]
    assert got["a"]["cpu_ms_per_query"] == {"w": 1.0} and got["b"]["cpu_ms_per_query"] == {"w": 2.0}
    assert got["a"]["half_load_p99_ms"] == 200.0 and got["b"]["half_load_p99_ms"] == 400.0
    assert got["b"]["missing"] == 3 and got["a"]["missing"] == 0  # every round's counts
    assert got["a"]["half_load_hops"] == ["a500"]  # its own halves' encounters
    assert "links" not in got["a"]  # no watch on a layout without shovels
