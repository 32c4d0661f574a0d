"""Prometheus metrics (issue 11): a real server, real traffic, a real scrape of ``/metrics``.

Each test starts the service on free ports (gRPC and metrics), sends known
traffic through a real channel, fetches ``/metrics`` with urllib and parses it
with prometheus-client's own parser, then asserts the exact counts and label
values. Zero-valued series are left out of the comparisons (every channel and
decision, every status code has a series from the start).
"""

from __future__ import annotations

import datetime as _dt
import os
import resource
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.check_client import build_request
from shixin_check.domain.keys import SubjectKeyer
from shixin_check.loader.index_redis import RedisKeys, connect
from shixin_check.loader.publish_redis import publish_snapshot
from shixin_check.server import metrics as metrics_mod
from shixin_check.server.auth import add_key
from shixin_check.server.engine import Tally
from shixin_check.server.metrics import METRIC_NAMES, Reading
from tests.accessdata import bearer, flight, hotel, refusal
from tests.conftest import SECRET, RedisServer, RunningServer
from tests.listdata import LI, WANG, ZHANG, ZHAO, basic_rows, person_entry, rid, write_jsonl
from tests.processes import free_port, run_cli
from tests.waiting import eventually

Serve = Callable[..., RunningServer]
#: (metric sample name, its labels) -> value
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

EXPIRED_ONE = rid("11010519700101005")  # listed until 2020: counted EXPIRED
BAD_ID = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")  # a wrong check digit


def header(published_at: float) -> dict[str, object]:
    moment = _dt.datetime.fromtimestamp(published_at, _dt.UTC).isoformat()
    return {"snapshot": {"includes_seq": 0, "published_at": moment}}


def rail(number: str, request_id: str = "") -> pb.CheckRequest:
    purchase = {"train_number": "G1234", "seat": "SECOND_CLASS"}
    return build_request("RAIL", id_number=number, purchase=purchase, request_id=request_id)


def scrape(server: RunningServer) -> Samples:
    metrics = server.service.metrics
    assert metrics is not None, "the server has no metrics listener"
    with urllib.request.urlopen(metrics.url, timeout=5) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def counted(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The non-zero samples of ``name``, by their labels."""
    return {labels: v for (n, labels), v in samples.items() if n == name and v}


def labels(**given: str) -> frozenset[tuple[str, str]]:
    return frozenset(given.items())


def value(samples: Samples, name: str, **given: str) -> float:
    return samples[(name, labels(**given))]


@pytest.fixture
def listed(tmp_path: Path) -> Path:
    """basic_rows() and one expired entry, published by the feed an hour ago."""
    rows = [
        *basic_rows(),
        person_entry(
            "E4", EXPIRED_ONE, "赵敏", valid_until="2020-12-31", published_on="2019-01-01"
        ),
    ]
    return write_jsonl(tmp_path / "snapshot.jsonl", [header(time.time() - 3600), *rows])


@pytest.fixture
def key_file(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A gateway (every channel, check and status) and a caller with one check in its
    bucket that refills once in 1,000 s: its second check is rate limited."""
    path = tmp_path / "keys.json"
    yield {
        "path": str(path),
        "gateway": add_key(path, "gateway", "*", ["check", "status"]),
        "slow": add_key(path, "slow-caller", "*", ["check"], rate_per_second=0.001, burst=1),
    }


def test_a_scrape_reports_known_traffic_exactly(
    serve: Serve, listed: Path, key_file: dict[str, str]
) -> None:
    server = serve(
        listed, keys_file=Path(key_file["path"]), metrics_listen=f"127.0.0.1:{free_port()}"
    )
    stub = server.stub()
    gateway = bearer(key_file["gateway"])
    # unary: one allowed, one denied
    assert stub.CheckConsumption(flight(ZHAO), metadata=gateway).decision == pb.ALLOW
    assert stub.CheckConsumption(flight(ZHANG), metadata=gateway).decision == pb.DENY
    # a batch: three checks
    batch = stub.CheckConsumptionBatch(
        pb.CheckBatchRequest(checks=[rail(ZHAO), rail(ZHANG), hotel(WANG)]), metadata=gateway
    )
    assert [r.decision for r in batch.results] == [pb.ALLOW, pb.DENY, pb.DENY]
    # a stream with one bad request among good ones
    answers = list(
        stub.CheckConsumptionStream(
            iter([flight(ZHAO, "s1"), flight(BAD_ID, "s2"), flight(ZHANG, "s3")]),
            metadata=gateway,
        )
    )
    assert [(a.request_id, a.decision, a.error.code) for a in answers] == [
        ("s1", pb.ALLOW, 0), ("s2", pb.DECISION_UNSPECIFIED, 3), ("s3", pb.DENY, 0),
    ]  # fmt: skip
    # refused calls: a bad field, no credentials, over the rate
    assert (
        refusal(lambda: stub.CheckConsumption(flight(BAD_ID), metadata=gateway)).code()
        is grpc.StatusCode.INVALID_ARGUMENT
    )
    assert refusal(lambda: stub.CheckConsumption(flight(ZHAO))).code() is (
        grpc.StatusCode.UNAUTHENTICATED
    )
    slow = bearer(key_file["slow"])
    assert stub.CheckConsumption(flight(ZHAO), metadata=slow).decision == pb.ALLOW
    assert (
        refusal(lambda: stub.CheckConsumption(flight(ZHAO), metadata=slow)).code()
        is grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    status = stub.GetListStatus(pb.ListStatusRequest(), metadata=gateway)

    samples = scrape(server)
    assert counted(samples, "shixin_checks_total") == {
        labels(channel="AIRLINE", decision="ALLOW"): 3,  # unary, stream, the slow caller
        labels(channel="AIRLINE", decision="DENY"): 2,  # unary, stream
        labels(channel="RAIL", decision="ALLOW"): 1,
        labels(channel="RAIL", decision="DENY"): 1,
        labels(channel="HOTEL", decision="DENY"): 1,
    }
    # every channel and answer has a series from the start, zero until counted
    assert value(samples, "shixin_checks_total", channel="OFFICE_RENTAL", decision="REVIEW") == 0
    assert counted(samples, "shixin_hits_total") == {
        labels(channel="AIRLINE"): 2, labels(channel="RAIL"): 1, labels(channel="HOTEL"): 1,
    }  # fmt: skip
    assert counted(samples, "shixin_refusals_total") == {
        labels(code="INVALID_ARGUMENT"): 2,  # the unary call and the stream's bad request
        labels(code="UNAUTHENTICATED"): 1,
        labels(code="RESOURCE_EXHAUSTED"): 1,
    }
    assert counted(samples, "shixin_rate_limited_total") == {labels(caller="slow-caller"): 1}
    calls = {
        dict(k)["method"]: v for k, v in counted(samples, "shixin_check_duration_seconds_count").items()
    }  # fmt: skip
    assert calls == {
        "CheckConsumption": 6,  # refused calls included
        "CheckConsumptionBatch": 1,
        "CheckConsumptionStream": 3,  # one per request
        "GetListStatus": 1,
    }
    buckets = counted(samples, "shixin_check_duration_seconds_bucket")
    les = sorted(float(dict(k)["le"]) for k in buckets if dict(k)["method"] == "GetListStatus")
    assert les[0] >= 0.00005 and les[-1] == float("inf")
    assert (
        value(samples, "shixin_check_duration_seconds_bucket", method="CheckConsumption", le="+Inf")
        == 6
    )
    assert value(samples, "shixin_check_duration_seconds_sum", method="CheckConsumption") > 0
    # Bloom: every listed subject checked was a positive and found (the unary DENY, the
    # batch's two in one look-up, the stream's DENY); any other positive found nothing.
    positives = value(samples, "shixin_bloom_positives_total")
    false_positives = value(samples, "shixin_bloom_false_positives_total")
    assert positives - false_positives == 4
    assert value(samples, "shixin_index_lookups_total") == 3 + false_positives
    assert value(samples, "shixin_hit_log_errors_total") == 0
    assert value(samples, "shixin_audit_log_errors_total") == 0
    # the list served
    assert counted(samples, "shixin_list_info") == {labels(version=status.version): 1}
    assert counted(samples, "shixin_list_entries") == {
        labels(list_type="SHIXIN", status="ACTIVE"): 2,
        labels(list_type="XIANGAO", status="ACTIVE"): 1,
        labels(list_type="SHIXIN", status="EXPIRED"): 1,
    }
    age = value(samples, "shixin_list_age_seconds")
    assert 3600 <= age < 3600 + 600, age
    # memory mode: no Redis series
    assert not counted(samples, "shixin_replica_lag_seconds")
    assert ("shixin_redis_errors_total", frozenset()) not in samples


def test_every_exported_name_is_in_metric_names(serve: Serve, listed: Path) -> None:
    server = serve(listed, metrics_listen=f"127.0.0.1:{free_port()}")
    assert server.service.metrics is not None
    with urllib.request.urlopen(server.service.metrics.url, timeout=5) as reply:
        families = text_string_to_metric_families(reply.read().decode())
        ours = {f.name for f in families if f.name.startswith("shixin_")}
    # the parser names a counter's family without its _total; memory mode has no Redis
    # series, a server without TLS no certificate expiry, a single server no restarts, one
    # without a keys file no keys-file gauge
    absent = {"shixin_replica_lag_seconds", "shixin_redis_errors",
              "shixin_tls_certificate_expiry_timestamp_seconds",
              "shixin_worker_restarts", "shixin_keys_file_refused"}  # fmt: skip
    assert ours == {name.removesuffix("_total") for name in METRIC_NAMES} - absent


def test_a_refused_keys_file_is_a_gauge_until_it_loads(
    serve: Serve, listed: Path, key_file: dict[str, str]
) -> None:
    """A keys file edited badly is refused and the keys in force stay, a key removed
    from it still working: only an ERROR line said so, nothing an alert could see."""
    path = Path(key_file["path"])
    server = serve(listed, keys_file=path, metrics_listen=f"127.0.0.1:{free_port()}")
    assert scrape(server)[("shixin_keys_file_refused", frozenset())] == 0
    good = path.read_text()
    path.write_text(good.rstrip().rstrip("}") + ",}")  # a trailing comma
    eventually(lambda: scrape(server)[("shixin_keys_file_refused", frozenset())] == 1,
               "the refusal counted")  # fmt: skip
    path.write_text(good)
    eventually(lambda: scrape(server)[("shixin_keys_file_refused", frozenset())] == 0,
               "the file loaded again")  # fmt: skip


def test_open_files_are_reported_against_the_limit_on_them(serve: Serve, listed: Path) -> None:
    """Every client connection holds a descriptor: at the soft limit new connections and
    log files fail (EMFILE), and nothing said how near a server was."""
    server = serve(listed, metrics_listen=f"127.0.0.1:{free_port()}")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = value(scrape(server), "shixin_open_files_ratio")
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(200)]  # the server's process
    try:
        during = value(scrape(server), "shixin_open_files_ratio")
    finally:
        for fd in held:
            os.close(fd)
    assert 0 < before < 1
    assert abs((during - before) * soft - 200) <= 10, (before, during, soft)


def test_open_files_at_the_limit_read_as_the_limit() -> None:
    """At the limit the count could not be listed (that takes a descriptor too): the
    series vanished just when it mattered; one short of it, it read above 1."""
    code = textwrap.dedent("""
        import os, resource
        from shixin_check.domain.system import open_files_ratio
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        held = []
        try:
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:
            pass
        at_limit = open_files_ratio()
        os.close(held.pop())
        print(at_limit, open_files_ratio())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)  # fmt: skip
    at_limit, one_short = map(float, done.stdout.split())
    assert (at_limit, one_short) == (1.0, 63 / 64), done.stdout


def test_a_failed_hit_log_write_is_counted_and_the_call_refused(serve: Serve, listed: Path) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full on this system")
    server = serve(listed, hit_log=full, metrics_listen=f"127.0.0.1:{free_port()}")
    stub = server.stub()
    assert refusal(lambda: stub.CheckConsumption(flight(ZHANG))).code() is (
        grpc.StatusCode.INTERNAL
    )
    assert stub.CheckConsumption(flight(ZHAO)).decision == pb.ALLOW  # no hit, nothing to write
    samples = scrape(server)
    assert value(samples, "shixin_hit_log_errors_total") == 1
    assert counted(samples, "shixin_refusals_total") == {labels(code="INTERNAL"): 1}
    assert counted(samples, "shixin_checks_total") == {
        labels(channel="AIRLINE", decision="ALLOW"): 1
    }
    assert not counted(samples, "shixin_hits_total")


def test_no_list_means_no_list_info(serve: Serve, tmp_path: Path) -> None:
    empty = tmp_path / "feed"
    empty.mkdir()
    server = serve(empty, metrics_listen=f"127.0.0.1:{free_port()}")
    assert refusal(lambda: server.stub().CheckConsumption(flight(ZHAO))).code() is (
        grpc.StatusCode.UNAVAILABLE
    )
    samples = scrape(server)
    assert not counted(samples, "shixin_list_info")
    assert ("shixin_list_age_seconds", frozenset()) not in samples
    assert counted(samples, "shixin_refusals_total") == {labels(code="UNAVAILABLE"): 1}


def test_a_metrics_port_in_use_stops_the_start_in_one_line(listed: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--list", str(listed), "--listen", f"127.0.0.1:{free_port()}",
                       "--metrics-listen", f"127.0.0.1:{port}")  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port}" in lines[0] and f"port {port} is in use" in lines[0]
    assert "--metrics-listen" in lines[0]


def test_a_bad_metrics_address_is_refused_naming_the_flag(listed: Path) -> None:
    done = run_cli("serve", "--list", str(listed), "--metrics-listen", "9464")
    assert done.returncode == 2
    assert (
        "--metrics-listen / SHIXIN_METRICS_LISTEN / config metrics_listen: '9464' "
        "(from the command line) is not HOST:PORT" in done.stderr
    )


def test_readings_of_several_workers_sum() -> None:
    """What a multi-process server will report: the sum over its workers."""
    a, b = Reading(tally=Tally()), Reading(tally=Tally())
    for reading, n in ((a, 2), (b, 3)):
        reading.tally.checks[5] = n
        reading.tally.latency[0][1] = n
        reading.tally.rate_limited["p"] = n
        reading.hit_log_errors = n
    a.source_timestamp, a.versions, a.entries = 100.0, ("v1",), (("SHIXIN", "ACTIVE", 9),)
    b.source_timestamp, b.versions, b.entries = 200.0, ("v2",), (("SHIXIN", "ACTIVE", 10),)
    b.redis_errors, b.replica_lag_seconds = 4, 1.5
    total = Reading.merged([a, b])
    assert total.tally.checks[5] == 5 and total.tally.latency[0][1] == 5
    assert total.tally.rate_limited == {"p": 5} and total.hit_log_errors == 5
    assert total.versions == ("v1", "v2")
    assert (total.source_timestamp, total.entries) == (100.0, (("SHIXIN", "ACTIVE", 9),))
    assert (total.redis_errors, total.replica_lag_seconds) == (4, 1.5)
    # the worker nearest its limit on open files; none known: no figure
    assert total.open_files_ratio is None
    a.open_files_ratio, b.open_files_ratio = 0.9, 0.2
    assert Reading.merged([a, b]).open_files_ratio == 0.9
    # a keys file refused by any worker; no keys file: no figure
    assert total.keys_file_refused is None
    a.keys_file_refused, b.keys_file_refused = False, True
    assert Reading.merged([a, b]).keys_file_refused is True
    # ready only if every worker is; stale if any worker's list is; no worker: not ready
    a.ready, b.ready, b.stale = True, False, True
    assert (Reading.merged([a, b]).ready, Reading.merged([a, b]).stale) == (False, True)
    b.ready, b.stale = True, False
    assert (Reading.merged([a, b]).ready, Reading.merged([a, b]).stale) == (True, False)
    assert not Reading.merged([]).ready


def publish_basic_rows(redis_server: RedisServer, tmp_path: Path) -> None:
    """basic_rows() published to ``redis_server`` as its current version."""
    client = connect(redis_server.url)
    try:
        publish_snapshot(
            client, write_jsonl(tmp_path / "s.jsonl", basic_rows()), SubjectKeyer(SECRET),
            RedisKeys(),
        )  # fmt: skip
    finally:
        client.close()


@pytest.mark.redis
def test_a_replica_reports_its_lag_and_redis_errors(
    redis_server: RedisServer, serve: Serve, tmp_path: Path
) -> None:
    publish_basic_rows(redis_server, tmp_path)
    server = serve(None, redis=redis_server.url, metrics_listen=f"127.0.0.1:{free_port()}")
    stub = server.stub()
    eventually(lambda: scrape(server).get(("shixin_replica_lag_seconds", frozenset())) == 0,
               "the replica caught up")  # fmt: skip
    assert stub.CheckConsumption(flight(LI)).decision == pb.DENY
    samples = scrape(server)
    assert value(samples, "shixin_redis_errors_total") == 0
    assert value(samples, "shixin_bloom_positives_total") >= 1

    redis_server.stop()
    try:
        # a listed subject cannot be confirmed: the --unavailable answer, and an error counted
        answer = stub.CheckConsumption(flight(LI))
        assert [r.code for r in answer.reasons] == ["INDEX_UNAVAILABLE"]
        eventually(lambda: scrape(server)[("shixin_replica_lag_seconds", frozenset())] > 0,
                   "the replica cannot confirm it is current")  # fmt: skip
        # the look-up's error (or none: once the follower found Redis gone, look-ups
        # stop asking it) and the follower's failed rounds, each counted
        eventually(lambda: value(scrape(server), "shixin_redis_errors_total") >= 2,
                   "the failed rounds counted")  # fmt: skip
    finally:
        redis_server.start()
    eventually(lambda: scrape(server)[("shixin_replica_lag_seconds", frozenset())] == 0,
               "caught up again once Redis is back")  # fmt: skip


@pytest.mark.redis
def test_the_hit_forwarders_redis_errors_count_too(
    redis_server: RedisServer, serve: Serve, tmp_path: Path
) -> None:
    publish_basic_rows(redis_server, tmp_path)
    server = serve(None, redis=redis_server.url, hit_log=tmp_path / "hits.jsonl",
                   metrics_listen=f"127.0.0.1:{free_port()}")  # fmt: skip
    eventually(lambda: server.stub().CheckConsumption(flight(LI)).decision == pb.DENY, "served")
    forwarder = server.service.forwarder
    assert forwarder is not None
    redis_server.stop()
    try:
        server.stub().CheckConsumption(flight(LI))  # a hit the forwarder cannot send now
        eventually(lambda: forwarder.errors.count >= 1, "the forwarder failing to send")
        assert value(scrape(server), "shixin_redis_errors_total") >= forwarder.errors.count
    finally:
        redis_server.start()


def test_a_refused_list_file_shows_as_behind_until_a_newer_one_loads(
    serve: Serve, tmp_path: Path
) -> None:
    """The alert's signal for a feed the server could not take: the list served is
    not the newest published, and nothing else in the metrics says so."""
    feed = tmp_path / "feed"
    feed.mkdir()
    write_jsonl(feed / "snapshot-0001.jsonl", basic_rows())
    server = serve(feed, metrics_listen=f"127.0.0.1:{free_port()}")
    assert value(scrape(server), "shixin_list_behind") == 0
    wrong = ZHANG[:-1] + ("0" if ZHANG[-1] != "0" else "1")  # a bad check digit
    bad = [*basic_rows(), person_entry("E9", wrong, "坏")]
    write_jsonl(feed / "snapshot-0002.jsonl", bad)
    eventually(lambda: value(scrape(server), "shixin_list_behind") == 1, "behind after a refusal")
    write_jsonl(feed / "snapshot-0003.jsonl", basic_rows())
    eventually(lambda: value(scrape(server), "shixin_list_behind") == 0, "caught up again")


def test_quiet_metrics_connections_are_closed_and_bounded_in_number(
    listed: Path, serve: Callable[..., RunningServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection to the metrics port that sends nothing held a thread and a file
    descriptor for good (no timeout): enough of them left grpc no descriptor for a new
    connection, and checks timed out. Now each is closed after a quiet spell, and past
    ``METRICS_CONNECTIONS`` at once the next is closed at once; scrapes go on."""
    monkeypatch.setattr(metrics_mod._QuietHandler, "timeout", 1.0)
    server = serve(listed, metrics_listen=f"127.0.0.1:{free_port()}")
    port = server.service.metrics.port  # type: ignore[union-attr]
    quiet = [socket.create_connection(("127.0.0.1", port), timeout=5)
             for _ in range(metrics_mod.METRICS_CONNECTIONS + 4)]  # fmt: skip
    try:
        for held in quiet:
            held.sendall(b"GET /")  # and nothing more
        over = []
        for held in quiet:
            held.settimeout(0.5)
            try:
                over.append(held.recv(1) == b"")  # closed by the server at once
            except TimeoutError:
                over.append(False)  # held open, being served
        assert over.count(True) >= 4
        time.sleep(1.5)  # past the quiet spell: every one closed, a scrape answered
        for held in quiet:
            held.settimeout(5)
            assert held.recv(1) == b"" or held.recv(65536) == b""
        assert value(scrape(server), "shixin_ready") == 1
        assert server.stub().CheckConsumption(rail(ZHAO), timeout=5).decision == pb.ALLOW
    finally:
        for held in quiet:
            held.close()
