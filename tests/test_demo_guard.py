"""Tests of esrt.demo.guard: only requests naming the served address, from the demo's own page, are answered."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from esrt.demo import DemoConfig, JobRunner, create_app, serve
from esrt.demo.guard import refusal, split_host
from tests.demo_support import demo_client, png, post, random_model


def _environ(host: str, origin: str | None = None, served: tuple[str, int] = ("127.0.0.1", 7860)) -> dict:
    environ = {"wsgi.url_scheme": "http", "SERVER_NAME": served[0], "SERVER_PORT": str(served[1]), "HTTP_HOST": host}
    if origin is not None:
        environ["HTTP_ORIGIN"] = origin
    return environ


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LocalHost.:7860"])
def test_loopback_names_are_one_address(host: str) -> None:
    assert refusal(_environ(host)) is None
    assert refusal(_environ(host, served=("::1", 7860))) is None
    assert refusal(_environ(host, served=("localhost", 7860))) is None


@pytest.mark.parametrize(
    "host",
    ["evil.example:7860", "127.0.0.1", "127.0.0.1:80", "localhost:7861", "", "::1:7860", "localhost:7860@evil.example"],
)
def test_other_hosts_are_refused(host: str) -> None:
    reason = refusal(_environ(host))
    assert reason is not None and "\n" not in reason and "127.0.0.1:7860" in reason


def test_origin_must_be_the_page_itself() -> None:
    assert refusal(_environ("127.0.0.1:7860", "http://127.0.0.1:7860")) is None
    assert refusal(_environ("localhost:7860", "http://localhost:7860")) is None
    for origin in (
        "http://evil.example",
        "http://localhost:7860",
        "https://127.0.0.1:7860",
        "null",
        "http://127.0.0.1",
    ):
        reason = refusal(_environ("127.0.0.1:7860", origin))
        assert reason is not None and "other web pages" in reason and origin in reason


def test_a_network_address_takes_its_own_and_the_computers_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "MyBox")
    served = ("192.168.1.5", 7860)
    for host in ("192.168.1.5:7860", "mybox:7860", "mybox.local:7860"):
        assert refusal(_environ(host, f"http://{host}", served=served)) is None, host
    for host in ("localhost:7860", "127.0.0.1:7860", "192.168.1.6:7860", "demo.example:7860"):
        assert refusal(_environ(host, served=served)) is not None, host
    assert refusal(_environ("Demo.Example:7860", served=served), allowed_hosts=("demo.example",)) is None


def test_the_socket_says_which_address_served_the_request() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        environ = {**_environ(f"localhost:{port}", served=("0.0.0.0", 1)), "werkzeug.socket": sock}
        assert refusal(environ) is None
        environ["HTTP_HOST"] = f"192.168.1.5:{port}"
        assert refusal(environ) is not None


def test_split_host() -> None:
    assert split_host("Example.COM.", 80) == ("example.com", 80)
    assert split_host("[0:0:0:0:0:0:0:1]:8080", 80) == ("::1", 8080)
    assert split_host("[::ffff:127.0.0.1]:1", 80) == ("127.0.0.1", 1)
    for bad in ("", ":80", "a:b", "[::1", "[::1]x", "a/b:80", "fe80::1"):
        with pytest.raises(ValueError, match="not a host"):
            split_host(bad, 80)


def test_the_app_refuses_with_403_and_one_line(tmp_path: Path) -> None:
    with demo_client(random_model(), tmp_path) as (c, runner):
        for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
            status, body = post(c, png((8, 8)), "a.png", headers=headers)
            assert status == 403 and "\n" not in body["error"], body
            assert c.get("/", headers=headers).status_code == 403
        assert runner.held() == 0 and list(runner.workdir.iterdir()) == []
        assert c.get("/", headers={"Origin": "http://localhost"}).status_code == 200


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Flask, int]]:
    app = create_app({4: random_model()}, DemoConfig(max_queue=2), workdir=tmp_path)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, server.port
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["esrt_demo"].close()


def _request(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'.encode())
    body.write(b"Content-Type: image/png\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode())
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


def test_a_served_demo_checks_host_and_origin(served: tuple[Flask, int]) -> None:
    app, port = served
    runner: JobRunner = app.extensions["esrt_demo"]
    status, body = _request(port, "GET", "/api/config", {"Host": f"attacker.example:{port}"})
    assert status == 403 and f"attacker.example:{port}" in body["error"] and f"127.0.0.1:{port}" in body["error"]
    assert _request(port, "GET", "/api/config", {"Host": f"localhost:{port}"})[0] == 200
    form, content_type = _multipart(png((8, 8)))
    page = {"Host": f"127.0.0.1:{port}", "Content-Type": content_type}
    status, body = _request(port, "POST", "/api/jobs", {**page, "Origin": "http://attacker.example"}, form)
    assert status == 403 and "other web pages" in body["error"] and runner.held() == 0
    status, body = _request(port, "POST", "/api/jobs", {**page, "Origin": f"http://127.0.0.1:{port}"}, form)
    assert status == 202 and body["name"] == "a.png"
    runner.wait_idle()
