"""The API's and the consumer's HTTP edges under the attacks that took the API down: idle
sockets, slow headers, header bombs. Against real processes on loopback, bounded in count."""

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from audit_consumer.settings import Settings
from tests.env import service_env
from tests.helpers import closed_by_peer
from tests.processes import Service, api, consumer

LIMITS = {
    "AUDIT_API_HEADER_TIMEOUT_SECONDS": "1",
    "AUDIT_API_MAX_HEADER_BYTES": "16384",
    "AUDIT_API_MAX_CONNECTIONS": "32",
}


@pytest.fixture
def server(streams: Settings, tmp_path: Path) -> Iterator[Service]:
    service = api(service_env(streams, **LIMITS), tmp_path).start()
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


def test_idle_connections_are_closed_and_cannot_starve_the_api(server: Service) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    try:
        assert server.probe("/healthz") in (0, 200)  # at the cap, new ones may be refused...
        for sock in idle:
            closed_by_peer(sock)  # ...but every idle one is closed: none sent a request head
        assert server.probe("/readyz") == 200  # and the API serves again
    finally:
        for sock in idle:
            sock.close()


def test_a_slow_header_is_cut_off_even_while_bytes_trickle_in(server: Service) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    try:
        while time.monotonic() - started < 30:  # a byte every 0.1 s never completes the head
            sock.sendall(b"X-a: b\r\n")
            time.sleep(0.1)
    except (BrokenPipeError, ConnectionResetError):
        pass
    else:
        raise AssertionError("a trickling request head was never cut off")
    finally:
        sock.close()


def test_a_header_bomb_gets_431_and_memory_stays_bounded(server: Service) -> None:
    assert server.proc is not None
    process = psutil.Process(server.proc.pid)
    answers = []
    for _ in range(4):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Bomb: ")
        try:
            for _ in range(100 * 16):  # up to 100 MB, 64 KB at a time
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""  # (a reset may overtake the 431 while we are still sending)
        with contextlib.suppress(ConnectionResetError):
            answer = closed_by_peer(sock)
        sock.close()
        answers.append(answer)
    assert all(a == b"" or a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert any(a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert process.memory_info().rss < 200 * 1024 * 1024  # the chart's limit is 512 MiB
    assert server.probe("/readyz") == 200


def test_the_consumer_probe_port_is_bounded_too(streams: Settings, tmp_path: Path) -> None:
    service = consumer(service_env(streams), tmp_path, 1).start()
    try:
        service.wait_ready()
        idle = [socket.create_connection(("127.0.0.1", service.port)) for _ in range(100)]
        for sock in idle[64:]:
            assert closed_by_peer(sock, within=5) == b""  # beyond its 64: closed at once
        for sock in idle:
            sock.close()
        # Serving again once it has seen those sockets close (asynchronously: poll, bounded).
        deadline = time.monotonic() + 30
        while service.probe("/readyz") != 200:
            assert time.monotonic() < deadline, "the probe port never freed its slots"
            time.sleep(0.1)
    finally:
        service.stop()


def request_on(sock: socket.socket, path: str = "/healthz") -> bytes:
    """One keep-alive request on ``sock``; the whole response (head and body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.settimeout(10)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += _more(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    while len(body) < length:
        body += _more(sock)
    return head + b"\r\n\r\n" + body


def _more(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("closed by the server before a whole answer")
    return data


@pytest.mark.timeout(200)
def test_an_idle_keep_alive_connection_outlives_the_proxies_in_front(server: Service) -> None:
    """ingress-nginx and cloud load balancers reuse an upstream connection idle for up to about
    60 s: the service must still take a request on it then (it closed them after 5 s)."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    try:
        assert request_on(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(62)  # idle, between requests (not a timing assertion: a wait for a state)
        assert request_on(sock).startswith(b"HTTP/1.1 200 ")
    finally:
        sock.close()


def test_a_graceful_stop_answers_a_request_on_an_idle_connection_and_then_closes(
    streams: Settings, tmp_path: Path
) -> None:
    """A proxy sends into a pooled keep-alive connection just as the service stops: uvicorn
    closed idle connections at once (a reset, a 502 for a PATCH). The stop refuses new
    connections at once, but an idle one still takes a request — answered, with
    ``Connection: close`` — and only then closes; the process exits."""
    env = service_env(streams, **LIMITS, AUDIT_API_SHUTDOWN_IDLE_SECONDS="8")
    service = api(env, tmp_path).start()
    try:
        service.wait_ready()
        sock = socket.create_connection(("127.0.0.1", service.port))
        assert request_on(sock).startswith(b"HTTP/1.1 200 ")
        service.signal(signal.SIGTERM)
        while True:  # until the stop has begun (a state, not a time)
            try:
                socket.create_connection(("127.0.0.1", service.port), timeout=1).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.05)
        answer = request_on(sock)
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert b"\r\nconnection: close\r\n" in answer.lower()
        assert closed_by_peer(sock) == b""  # nothing more, then closed
        sock.close()
        assert service.wait(30) in (0, -signal.SIGTERM)  # (uvicorn re-raises what it handled)
    finally:
        service.stop()


def test_at_the_cap_the_oldest_idle_connection_makes_room(
    streams: Settings, tmp_path: Path
) -> None:
    """Long keep-alives must not lock newcomers out: at the cap, the oldest idle one goes."""
    service = api(service_env(streams, AUDIT_API_MAX_CONNECTIONS="8"), tmp_path).start()
    socks: list[socket.socket] = []
    try:
        service.wait_ready()
        time.sleep(0.5)  # the readiness probes' connections are gone
        for _ in range(8):
            sock = socket.create_connection(("127.0.0.1", service.port))
            assert request_on(sock).startswith(b"HTTP/1.1 200 ")
            socks.append(sock)
        newcomer = socket.create_connection(("127.0.0.1", service.port))
        socks.append(newcomer)
        assert request_on(newcomer).startswith(b"HTTP/1.1 200 ")  # served, not refused
        assert closed_by_peer(socks[0], within=10) == b""  # the oldest idle one made room
        assert request_on(socks[-2]).startswith(b"HTTP/1.1 200 ")  # the younger ones stay
    finally:
        for sock in socks:
            sock.close()
        service.stop()
