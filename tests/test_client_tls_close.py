"""The clients' TLS material, and what they do once closed, through real servers.

A client certificate without its key made grpc's core abort the whole process
(SIGABRT): such a client runs in a child process here, and the test reads its
exit status. Certificates are made by openssl in the test's temporary folder
(``tests.test_access.pki``). A closed client refuses every call with a plain
CANCELLED ``CheckError`` (reason ``CLIENT_CLOSED``), before any local decision;
an ``AsyncCheckClient`` closed under calls in flight raises that too, never an
``asyncio.CancelledError`` its caller did not ask for.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import orjson
import pytest

from shixin.v1 import check_pb2 as pb
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.check_client import (
    CheckClient,
    answered_locally_too,
    build_request,
    with_answers,
)
from shixin_check.clients.errors import CheckError, ErrorDetails, from_info
from shixin_check.server.auth import add_key
from tests.conftest import RunningServer
from tests.listdata import ZHANG, ZHAO, basic_rows, rid, write_jsonl
from tests.processes import run_cli
from tests.test_access import pki  # noqa: F401 (the fixture mtls asks for)

Serve = Callable[..., RunningServer]


def flight(number: str = ZHAO) -> pb.CheckRequest:
    return build_request("AIRLINE", id_number=number)


def unlisted(i: int) -> pb.CheckRequest:
    return flight(rid(f"11010519900101{i:03d}"))


def assert_closed(error: BaseException) -> None:
    """``error`` is what a closed client raises: a plain CANCELLED ``CheckError``."""
    assert type(error) is CheckError, repr(error)
    assert error.code() is grpc.StatusCode.CANCELLED
    assert error.reason == "CLIENT_CLOSED"
    assert "the client is closed" in error.details()


class MutualTls(NamedTuple):
    """A server that wants a client certificate, and the folder of its certificates."""

    server: RunningServer
    certificates: Path

    def file(self, name: str) -> str:
        return str(self.certificates / name)

    def read(self, name: str) -> bytes:
        return (self.certificates / name).read_bytes()


@pytest.fixture
def mtls(serve: Serve, tmp_path: Path, request: pytest.FixtureRequest) -> MutualTls:
    """``tests.test_access.pki``'s certificates; CN rail-gw is principal 12306 (AIRLINE)."""
    certificates: Path = request.getfixturevalue("pki")
    keys_file = tmp_path / "tls-keys.json"
    keys_file.write_text(orjson.dumps({"keys": [], "tls_principals": [
        {"common_name": "rail-gw", "principal": "12306", "channels": ["AIRLINE"],
         "roles": ["check", "status"]},
    ]}).decode())  # fmt: skip
    server = serve(
        write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys_file,
        tls_cert=certificates / "server.pem", tls_key=certificates / "server.key",
        tls_client_ca=certificates / "ca.pem",
    )  # fmt: skip
    return MutualTls(server, certificates)


# --- a client certificate without its key ---------------------------------------

#: A client given one half of its certificate, then the whole: argv folder, target, case, id.
_HALF = """
import asyncio, sys
from pathlib import Path
from shixin_check.clients.aio import AsyncCheckClient
from shixin_check.clients.check_client import (
    CheckClient,
    answered_locally_too,
    build_request,
    with_answers,
)

folder, target, case = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
ca = (folder / "ca.pem").read_bytes()
cert, key = (folder / "rail-gw.pem").read_bytes(), (folder / "rail-gw.key").read_bytes()
half = {"cert": {"client_cert": cert}, "key": {"client_key": key}}[case.split("-")[0]]

async def made_in_a_loop():
    return AsyncCheckClient(target, root_ca=ca, **half)

try:
    if case.endswith("-async"):
        asyncio.run(made_in_a_loop())
    else:
        CheckClient(target, root_ca=ca, **half)
    print("no error")
except ValueError as exc:
    print(f"ValueError: {exc}")
with CheckClient(target, root_ca=ca, client_cert=cert, client_key=key) as whole:
    request = build_request("AIRLINE", id_number=sys.argv[4])
    print("whole:", whole.check(request).decision)
"""


@pytest.mark.parametrize(
    ("case", "said"),
    [
        ("cert-sync", "client_key: missing while client_cert is given"),
        ("key-sync", "client_cert: missing while client_key is given"),
        ("cert-async", "client_key: missing while client_cert is given"),
    ],
)
def test_a_certificate_without_its_key_is_a_value_error_not_an_abort(
    mtls: MutualTls, case: str, said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HALF, str(mtls.certificates), mtls.server.address, case, ZHANG],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])  # SIGABRT was -6
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"ValueError: {said}"), lines
    assert lines[1] == f"whole: {pb.DENY}"  # the same process goes on, and mutual TLS works


def test_a_client_certificate_without_root_ca_is_refused(mtls: MutualTls) -> None:
    """It was dropped without a word, and the client spoke plaintext."""
    cert, key = mtls.read("rail-gw.pem"), mtls.read("rail-gw.key")
    with pytest.raises(ValueError, match="client_cert and client_key: given without root_ca"):
        CheckClient(mtls.server.address, client_cert=cert, client_key=key)
    with pytest.raises(ValueError, match="client_cert and client_key: given without root_ca"):
        AsyncCheckClient(mtls.server.address, client_cert=cert, client_key=key)


# --- shixin-check health: the flags of check and status --------------------------


def test_health_refuses_flags_that_cannot_work_in_one_line(mtls: MutualTls, tmp_path: Path) -> None:
    """``health`` is the image's HEALTHCHECK: a certificate without its key aborted it
    (exit 134, grpc's stack trace); a missing --ca file named no flag."""
    ca, cert, key = (mtls.file(name) for name in ("ca.pem", "rail-gw.pem", "rail-gw.key"))
    target = mtls.server.address
    not_pem = str(write_jsonl(tmp_path / "not-pem.jsonl", basic_rows()))
    missing = str(tmp_path / "missing.pem")
    for flags, said in (
        (("--ca", ca, "--client-cert", cert), "--client-cert and --client-key go together"),
        (("--ca", ca, "--client-key", key), "--client-cert and --client-key go together"),
        (("--ca", missing), f"--ca {missing}: [Errno 2] No such file"),
        (("--ca", not_pem), f"--ca {not_pem}: {not_pem} holds no PEM block"),
        (("--client-cert", cert, "--client-key", key), "--client-cert and --client-key: need --ca"),
        (("--ca", ca, "--client-cert", cert, "--client-key", ca), f"--client-cert {cert} and"),
        (("--api-key", "k\u4e2d"), "--api-key: must be printable ASCII without spaces"),
    ):
        done = run_cli("health", "--target", target, *flags)
        assert done.returncode == 2, (flags, done.returncode, done.stderr[-2000:])
        assert done.stderr.startswith(f"shixin-check health: {said}"), (flags, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1, (flags, done.stderr)
    done = run_cli("health", "--target", target, "--ca", ca,
                   "--client-cert", cert, "--client-key", key)  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr


def test_check_and_status_refuse_a_client_certificate_without_ca(mtls: MutualTls) -> None:
    """The certificate was dropped without a word and the call went out in plaintext
    (UNAVAILABLE from a server that wants TLS). Needs ``cli._client`` to use
    ``cli_health.client_credentials``."""
    cert, key = mtls.file("rail-gw.pem"), mtls.file("rail-gw.key")
    for command in (("check", "--channel", "AIRLINE", "--id", ZHAO), ("status",)):
        done = run_cli(*command, "--target", mtls.server.address, "--client-cert", cert,
                       "--client-key", key)  # fmt: skip
        assert done.returncode == 2, (command, done.stderr[-2000:])
        assert "--client-cert and --client-key: need --ca" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- a closed client ---------------------------------------------------------------


def audit_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_closed_prefilter_client_refuses_before_any_local_answer(
    serve: Serve, tmp_path: Path
) -> None:
    """It went on answering ALLOW locally for up to prefilter_max_age, with nothing in
    the local audit (whose file was closed), and a listed subject raised ValueError."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    audit = tmp_path / "local.jsonl"
    client = CheckClient(server.address, prefilter=True, local_audit_path=audit)
    assert client.check(unlisted(1)).decided_locally
    assert audit_lines(audit) == 1
    client.close()
    calls: list[Callable[[], object]] = [
        lambda: client.check(unlisted(2)),
        lambda: client.check(flight(ZHANG)),
        lambda: client.check_batch([unlisted(3), flight(ZHANG)]),
        lambda: list(client.check_stream([unlisted(4)])),
        lambda: client.status(),
    ]
    for call in calls:
        with pytest.raises(CheckError) as refused:
            call()
        assert_closed(refused.value)
    with pytest.raises(CheckError) as refused:  # and the audit itself: no record is dropped
        assert client.prefilter is not None
        client.prefilter.audit.write([{"check_id": "local-x"}])
    assert_closed(refused.value)
    assert audit_lines(audit) == 1


def test_a_closed_async_prefilter_client_refuses_before_any_local_answer(
    serve: Serve, tmp_path: Path
) -> None:
    """It answered ALLOW locally, unaudited, and a listed subject raised grpc.aio's
    UsageError."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    audit = tmp_path / "local.jsonl"

    async def main() -> list[BaseException | None]:
        client = AsyncCheckClient(server.address, prefilter=True, local_audit_path=audit)
        async with client:
            assert (await client.check(unlisted(1))).decided_locally

        async def streamed() -> list[pb.CheckResponse]:
            return [a async for a in client.check_stream([unlisted(4)])]

        return [
            await outcome(call)
            for call in (
                client.check(unlisted(2)),
                client.check(flight(ZHANG)),
                client.check_batch([unlisted(3), flight(ZHANG)]),
                streamed(),
                client.status(),
            )
        ]

    outcomes = asyncio.run(main())
    assert len(outcomes) == 5
    for result in outcomes:
        assert result is not None, "a closed client answered"
        assert_closed(result)
    assert audit_lines(audit) == 1


def test_a_batch_closed_under_it_hands_out_no_local_answer_it_could_not_record(
    serve: Serve, tmp_path: Path
) -> None:
    """A prefiltered batch whose client is closed while its calls are out: the local
    answers can no longer be recorded, so the answers it carries end before the first
    local one (they ran on past it, unrecorded; with every call answered, an IndexError)."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    audit = tmp_path / "local.jsonl"
    client = CheckClient(server.address, prefilter=True, local_audit_path=audit)
    state = client.prefilter
    assert state is not None
    split = state.split([flight(ZHANG), unlisted(1), flight(ZHANG)])  # server, local, server
    assert split.positions == [0, 2]
    deny = server.stub().CheckConsumption(flight(ZHANG), timeout=5)
    client.close()
    cancelled = ErrorDetails(grpc.StatusCode.CANCELLED, "the client is closed")
    for sent in ([deny], [deny, deny]):  # the second call unanswered, or answered too
        error = with_answers(from_info(cancelled), sent, len(sent))
        answered_locally_too(error, split, state)
        assert (list(error.answers), error.first_unanswered) == ([deny], 1)
    assert audit_lines(audit) == 0


# --- AsyncCheckClient.close() under calls in flight -----------------------------------


@pytest.fixture
def mute() -> Iterator[str]:
    """An address that takes connections and never says a word: every call waits."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"127.0.0.1:{listener.getsockname()[1]}"


async def outcome(call: Any) -> BaseException | None:
    try:
        await call
    except BaseException as exc:  # whatever it is, the test reads it
        return exc
    return None


def test_closing_an_async_client_under_calls_is_cancelled_not_cancellederror(mute: str) -> None:
    """They raised asyncio.CancelledError into tasks nobody cancelled, past ``except
    CheckError`` and ``except Exception``; a task that is cancelled still gets its
    CancelledError."""

    async def streamed(client: AsyncCheckClient) -> None:
        async for _answer in client.check_stream([flight()]):
            pass

    async def main() -> tuple[list[BaseException | None], BaseException | None]:
        client = AsyncCheckClient(mute, timeout=20)
        loop = asyncio.get_running_loop()
        tasks = [
            loop.create_task(outcome(client.check(flight()))),
            loop.create_task(outcome(client.check_batch([flight(), flight(ZHANG)]))),
            loop.create_task(outcome(streamed(client))),
            loop.create_task(outcome(client.status())),
        ]
        cancelled = loop.create_task(client.check(flight()))
        await asyncio.sleep(0.5)  # all of them waiting on the mute server
        cancelled.cancel()  # the caller's own cancellation, at the same moment
        await client.close()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return results, await outcome(cancelled)

    results, cancelled = asyncio.run(main())
    for result in results:
        assert result is not None
        assert_closed(result)
    assert isinstance(results[1], CheckError)
    assert (results[1].answers, results[1].first_unanswered) == ([], 0)
    assert isinstance(cancelled, asyncio.CancelledError)


def test_a_batch_closed_between_calls_keeps_the_answers_received(
    serve: Serve, tmp_path: Path
) -> None:
    """A key of one check per 10 s: the batch's first call is answered, the second is
    refused and waits out the server's push-back in grpc's retry when the client is
    closed. Both clients raise CANCELLED carrying the first answer (the async one raised
    CancelledError and lost it)."""
    keys = tmp_path / "keys.json"
    slow = add_key(keys, "slow", "*", ["check"], rate_per_second=0.1, burst=1)
    other = add_key(keys, "other", "*", ["check"], rate_per_second=0.1, burst=1)
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()), keys_file=keys)
    requests = [flight(ZHANG), flight()]

    def blocking() -> BaseException | None:
        client = CheckClient(server.address, api_key=slow, timeout=20, batch_size=1)
        raised: list[BaseException] = []

        def call() -> None:
            try:
                client.check_batch(requests)
            except BaseException as exc:  # whatever it is, the test reads it
                raised.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.5)
        client.close()
        caller.join(timeout=10)
        return raised[0] if raised else None

    async def awaited() -> BaseException | None:
        client = AsyncCheckClient(server.address, api_key=other, timeout=20, batch_size=1)
        task = asyncio.get_running_loop().create_task(outcome(client.check_batch(requests)))
        await asyncio.sleep(0.5)
        await client.close()
        return await asyncio.wait_for(task, 10)

    for error in (blocking(), asyncio.run(awaited())):
        assert error is not None
        assert_closed(error)
        assert isinstance(error, CheckError)
        assert [a.decision for a in error.answers] == [pb.DENY]
        assert error.first_unanswered == 1


# --- leaving check_stream early while holding it -------------------------------------


class Source:
    """Requests that come slowly, counting how many grpc has taken."""

    def __init__(self) -> None:
        self.taken = 0

    def __iter__(self) -> Iterator[pb.CheckRequest]:
        for i in range(60):
            self.taken += 1
            yield unlisted(i)
            time.sleep(0.02)

    async def __aiter__(self) -> AsyncIterator[pb.CheckRequest]:
        for i in range(60):
            self.taken += 1
            yield unlisted(i)
            await asyncio.sleep(0.02)


def test_a_stream_left_by_with_is_cancelled_though_still_held(serve: Serve, tmp_path: Path) -> None:
    """``answers = client.check_stream(...)`` then ``break``: the stream stayed open and the
    server went on deciding every request; ``with`` (``async with``) cancels it."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))

    source = Source()
    with CheckClient(server.address) as client:
        with client.check_stream(source) as answers:
            for _answer in answers:
                break
        taken = source.taken
        time.sleep(0.6)  # 30 more requests' worth, were it still open
        assert answers is not None and source.taken <= taken + 1

    async def main() -> tuple[int, int]:
        source = Source()
        async with AsyncCheckClient(server.address) as client:
            async with client.check_stream(source) as answers:
                async for _answer in answers:
                    break
            taken = source.taken
            await asyncio.sleep(0.6)
            assert answers is not None
            return taken, source.taken

    taken, later = asyncio.run(main())
    assert later <= taken + 1


def test_a_stream_closed_from_another_thread_ends_the_loop_reading_it(
    serve: Serve, tmp_path: Path
) -> None:
    """``answers.close()`` while a worker thread iterated raised ValueError (generator
    already executing) and the stream went on; it cancels the call, and the loop in
    the other thread simply ends."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))
    source = Source()
    read: list[pb.CheckResponse] = []
    failed: list[BaseException] = []
    with CheckClient(server.address) as client:
        answers = client.check_stream(source)

        def reader() -> None:
            try:
                read.extend(answers)
            except BaseException as exc:  # noqa: BLE001 - what the thread saw, for the test
                failed.append(exc)

        thread = threading.Thread(target=reader)
        thread.start()
        deadline = time.monotonic() + 10
        while not read and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read, "no answer came"
        answers.close()  # from this thread, while the reader is inside the loop
        thread.join(timeout=5)
        assert not thread.is_alive() and failed == []
        taken = source.taken
        time.sleep(0.4)
        assert source.taken <= taken + 1 and len(read) < 60


def test_a_task_cancelled_while_it_closes_an_async_client_is_cancelled(
    serve: Serve, tmp_path: Path
) -> None:
    """close() waited on its prefilter refresher under suppress(CancelledError), which
    swallowed a cancellation of the task calling it: the task ended as if not cancelled.
    It still closes the client whole, then lets the cancellation go on."""
    server = serve(write_jsonl(tmp_path / "l.jsonl", basic_rows()))

    async def main() -> tuple[bool, BaseException | None]:
        client = AsyncCheckClient(server.address, prefilter=True,
                                  local_audit_path=tmp_path / "local.jsonl")  # fmt: skip
        await client.__aenter__()
        assert (await client.check(unlisted(1))).decided_locally
        closing = asyncio.get_running_loop().create_task(client.close())
        await asyncio.sleep(0)  # it is waiting for the refresher to stop
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        return closing.cancelled(), await outcome(client.check(unlisted(2)))

    cancelled, after = asyncio.run(main())
    assert cancelled
    assert isinstance(after, CheckError) and after.reason == "CLIENT_CLOSED"
