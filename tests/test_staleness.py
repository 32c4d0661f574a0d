"""Staleness is readiness, liveness stays, and a clean SIGTERM (issue 11).

Real servers on free ports and real channels: the ``serve`` fixture for the
health states, a ``shixin-check serve`` child process for SIGTERM. List ages
come from the snapshot header's ``published_at`` (the feed's time, never a
file's mtime). Waits poll with a generous timeout; nothing asserts a duration.
"""

from __future__ import annotations

import datetime as _dt
import queue
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shixin.v1 import check_pb2 as pb
from shixin.v1 import check_pb2_grpc as pb_grpc
from shixin_check.cli import _parser
from shixin_check.clients.check_client import build_request
from shixin_check.domain.errors import ConfigurationError
from shixin_check.server.app import LIST_CURRENT, LIVENESS, SERVICE_NAME
from shixin_check.server.settings import parse_duration, serve_settings
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, write_jsonl
from tests.processes import ServeProcess, free_port, run_cli
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
HOUR = 3600.0


def snapshot(path: Path, published_at: float) -> Path:
    """basic_rows() with a header saying the feed published them at ``published_at``;
    written aside and renamed, as the feed does."""
    moment = _dt.datetime.fromtimestamp(published_at, _dt.UTC).isoformat()
    part = write_jsonl(
        path.with_suffix(".part"),
        [{"snapshot": {"includes_seq": 0, "published_at": moment}}, *basic_rows()],
    )
    part.rename(path)
    return path


def health(channel: grpc.Channel, service: str = "") -> str:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=5
    )
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def gauge(metrics: str, name: str) -> float:
    """The value of the unlabelled gauge ``name`` on the /metrics page at ``metrics``."""
    with urllib.request.urlopen(metrics, timeout=5) as reply:
        (line,) = [x for x in reply.read().decode().splitlines() if x.startswith(name + " ")]
    return float(line.split()[1])


def rfc3339(unix: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


def check(stub: pb_grpc.ConsumptionCheckStub, number: str) -> pb.CheckResponse:
    reply: pb.CheckResponse = stub.CheckConsumption(
        build_request("AIRLINE", id_number=number), timeout=5
    )
    return reply


def test_a_stale_list_is_not_ready_but_alive_and_still_answers(
    serve: Serve, tmp_path: Path
) -> None:
    published = int(time.time() - 2 * HOUR)
    snapshot(tmp_path / "snapshot-0001.jsonl", published)
    server = serve(tmp_path, max_list_age=HOUR, metrics_listen=f"127.0.0.1:{free_port()}")
    channel, stub = server.channel, server.stub()
    assert server.service.metrics is not None
    metrics = server.service.metrics.url
    eventually(lambda: health(channel) == "NOT_SERVING", "readiness NOT_SERVING")
    # and the metrics say so, for an alert (no refusal is counted once traffic goes away)
    assert (gauge(metrics, "shixin_ready"), gauge(metrics, "shixin_list_stale")) == (0, 1)
    assert health(channel, SERVICE_NAME) == "NOT_SERVING"
    assert health(channel, LIVENESS) == "SERVING"  # a stale server is alive
    assert health(channel, LIST_CURRENT) == "SERVING"  # nothing was refused: not behind
    # still answered from the last list, each answer marked stale
    denied, allowed = check(stub, ZHANG), check(stub, ZHAO)
    assert (denied.decision, denied.stale) == (pb.DENY, True)
    assert (allowed.decision, allowed.stale) == (pb.ALLOW, True)
    batch = stub.CheckConsumptionBatch(
        pb.CheckBatchRequest(checks=[build_request("AIRLINE", id_number=n) for n in (ZHAO, ZHANG)])
    )
    assert [(r.decision, r.stale) for r in batch.results] == [(pb.ALLOW, True), (pb.DENY, True)]
    streamed = list(
        stub.CheckConsumptionStream(
            iter([build_request("AIRLINE", id_number=ZHAO, request_id="a")])
        )
    )
    assert [(a.decision, a.stale) for a in streamed] == [(pb.ALLOW, True)]
    status = stub.GetListStatus(pb.ListStatusRequest())
    assert status.serving and status.stale
    assert status.max_list_age_seconds == 3600
    assert status.stale_since == rfc3339(published + HOUR)
    printed = run_cli("status", "--target", server.address)
    assert f"STALE since {rfc3339(published + HOUR)}" in printed.stdout, printed.stdout

    # the feed publishes again: readiness comes back, answers are fresh
    snapshot(tmp_path / "snapshot-0002.jsonl", time.time())
    eventually(lambda: health(channel) == "SERVING", "readiness SERVING on a fresh list")
    assert health(channel, SERVICE_NAME) == "SERVING"
    assert (gauge(metrics, "shixin_ready"), gauge(metrics, "shixin_list_stale")) == (1, 0)
    assert health(channel, LIVENESS) == "SERVING"
    fresh = check(stub, ZHANG)
    assert (fresh.decision, fresh.stale) == (pb.DENY, False)
    status = stub.GetListStatus(pb.ListStatusRequest())
    assert not status.stale and status.stale_since == "" and status.max_list_age_seconds == 3600
    assert "STALE" not in run_cli("status", "--target", server.address).stdout


def test_a_list_that_ages_past_the_limit_turns_stale_while_served(
    serve: Serve, tmp_path: Path
) -> None:
    snapshot(tmp_path / "snapshot-0001.jsonl", time.time())
    server = serve(tmp_path, max_list_age=1.0)
    eventually(lambda: health(server.channel) == "NOT_SERVING", "the list aged past 1 s")
    eventually(lambda: check(server.stub(), ZHAO).stale, "answers marked stale")
    assert health(server.channel, LIVENESS) == "SERVING"


def test_without_a_maximum_age_an_old_list_is_ready_and_fresh(serve: Serve, tmp_path: Path) -> None:
    snapshot(tmp_path / "snapshot-0001.jsonl", time.time() - 400 * 24 * HOUR)
    server = serve(tmp_path)
    assert health(server.channel) == "SERVING"
    assert health(server.channel, LIVENESS) == "SERVING"
    assert not check(server.stub(), ZHANG).stale
    status = server.stub().GetListStatus(pb.ListStatusRequest())
    assert not status.stale and status.max_list_age_seconds == 0


def test_before_any_list_liveness_is_serving(serve: Serve, tmp_path: Path) -> None:
    server = serve(tmp_path, max_list_age=HOUR)  # an empty feed folder
    assert health(server.channel) == "NOT_SERVING"
    assert health(server.channel, LIVENESS) == "SERVING"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("36h", 129600.0), ("90m", 5400.0), ("3600s", 3600.0), ("2d", 172800.0), ("", None),
     ("off", None)],
)  # fmt: skip
def test_max_list_age_forms(text: str, seconds: float | None) -> None:
    assert parse_duration(text, "--max-list-age") == seconds


@pytest.mark.parametrize("text", ["36", "1.5h", "0h", "-2d", "36 hours", "h", "１h"])
def test_a_bad_max_list_age_is_refused_naming_the_forms(text: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        parse_duration(text, "--max-list-age")
    message = str(refused.value)
    assert message.startswith(
        f"--max-list-age / SHIXIN_MAX_LIST_AGE / config max_list_age: {text!r}"
    )
    assert "36h, 90m, 3600s, 2d" in message


def test_the_flags_reach_the_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    settings = serve_settings(
        _parser().parse_args(["serve", "--list", path, "--max-list-age", "36h"])
    )
    assert (settings.max_list_age, settings.metrics_listen) == (129600.0, None)
    monkeypatch.setenv("SHIXIN_MAX_LIST_AGE", "90m")
    monkeypatch.setenv("SHIXIN_METRICS_LISTEN", "0.0.0.0:9464")
    settings = serve_settings(_parser().parse_args(["serve", "--list", path]))
    assert (settings.max_list_age, settings.metrics_listen) == (5400.0, "0.0.0.0:9464")
    monkeypatch.delenv("SHIXIN_METRICS_LISTEN")
    demo = serve_settings(_parser().parse_args(["serve", "--demo"]))
    assert demo.metrics_listen == "127.0.0.1:9464"
    off = serve_settings(_parser().parse_args(["serve", "--demo", "--metrics-listen", "off"]))
    assert off.metrics_listen is None


def test_a_bad_max_list_age_stops_the_start_in_one_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", basic_rows())
    done = run_cli("serve", "--list", str(path), "--max-list-age", "36")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert (
        "--max-list-age / SHIXIN_MAX_LIST_AGE / config max_list_age: '36' (from the command line) "
        "is not a duration" in lines[0]
    )


# --- SIGTERM: readiness off, in-flight calls finish, logs closed, metrics stopped ---------


def watch(channel: grpc.Channel, service: str) -> Any:
    """A Health.Watch stream for ``service`` (an iterator of its status changes)."""
    return health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=service))


def status_of(reply: Any) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def scrape_checks(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        text: str = reply.read().decode()
    return text


def test_sigterm_drains_then_closes_the_logs_and_the_metrics_listener(tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    feed.mkdir()
    snapshot(feed / "snapshot-0001.jsonl", time.time())
    hits, audit = tmp_path / "hits.jsonl", tmp_path / "audit.jsonl"
    metrics_port = free_port()
    metrics = f"http://127.0.0.1:{metrics_port}/metrics"
    server = ServeProcess(
        "--list", str(feed), "--grace", "5", "--hit-log", str(hits), "--audit-log", str(audit),
        "--metrics-listen", f"127.0.0.1:{metrics_port}", "--max-list-age", "1d",
        log=tmp_path / "serve.log",
    )  # fmt: skip
    channel = grpc.insecure_channel(server.target)
    watches: list[Any] = []
    try:
        server.wait_serving()
        ready, alive = watch(channel, ""), watch(channel, LIVENESS)
        watches += [ready, alive]
        assert (status_of(next(ready)), status_of(next(alive))) == ("SERVING", "SERVING")
        gate: queue.Queue[pb.CheckRequest | None] = queue.Queue()

        def requests() -> Iterator[pb.CheckRequest]:
            while (item := gate.get()) is not None:
                yield item

        answers = pb_grpc.ConsumptionCheckStub(channel).CheckConsumptionStream(requests())
        gate.put(build_request("AIRLINE", id_number=ZHANG, request_id="before"))
        assert next(answers).request_id == "before"

        server.proc.send_signal(signal.SIGTERM)
        # readiness and liveness go NOT_SERVING at once ...
        assert status_of(next(ready)) == "NOT_SERVING"
        assert status_of(next(alive)) == "NOT_SERVING"
        # ... the call in flight is still answered, and the metrics still scraped
        gate.put(build_request("AIRLINE", id_number=ZHANG, request_id="during"))
        during = next(answers)
        assert (during.request_id, during.decision) == ("during", pb.DENY)
        assert 'shixin_checks_total{channel="AIRLINE",decision="DENY"} 2.0' in scrape_checks(
            metrics
        )
        gate.put(None)
        assert list(answers) == []
        for stream in watches:
            stream.cancel()
        assert server.proc.wait(timeout=30) == 0
    finally:
        for stream in watches:
            stream.cancel()
        channel.close()
        server.stop()

    output = server.output()
    assert "stopped: in-flight calls done, logs closed" in output, output
    # every answered hit is in the hit log, and the audit log's head was noted on close
    assert [orjson.loads(line)["request_id"] for line in hits.read_bytes().splitlines()] == [
        "before", "during",
    ]  # fmt: skip
    records = audit.read_bytes().splitlines()
    head = orjson.loads(Path(f"{audit}.head").read_bytes())
    assert head["seq"] == orjson.loads(records[-1])["seq"] == len(records)
    verified = run_cli("audit", "verify", str(audit))
    assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stdout
    with pytest.raises(urllib.error.URLError):  # the metrics listener is closed
        scrape_checks(metrics)
