"""Real servers the notifier's tests and benchmark deliver to: an HTTP receiver (webhooks, an
SMS gateway, Zalo ZNS) that records every request and answers as told, and an SMTP server
(aiosmtpd). Each runs in this process on a free loopback port."""

from __future__ import annotations

import gc
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address
from pathlib import Path
from typing import Any, Self

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from floodwatch.localservices import free_port


@dataclass(frozen=True)
class Request:
    path: str
    headers: Mapping[str, str]
    body: bytes
    received_ns: int


# (status, extra headers, body) for a request
Answer = tuple[int, Mapping[str, str], bytes]
Responder = Callable[[Request], Answer]


def ok(request: Request) -> Answer:
    return 200, {}, b'{"ok": true}'


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
    # Headers and body go out in two writes: without this, the second waits for a delayed ACK.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if len(body) < length:
            # The sender died mid-request (the SIGKILL tests): a real receiver never sees a
            # torn body as a request, and neither does this one.
            self.close_connection = True
            return
        request = Request(self.path, {k: v for k, v in self.headers.items()}, body, time.time_ns())
        status, headers, answer = self.server.owner.answer(request)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer)))
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, port: int, owner: HttpReceiver) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", port), _Handler)


class HttpReceiver:
    """An HTTP server that records requests; `stop()` and `start()` again on the same port
    stand for an outage of the receiver."""

    def __init__(self, responder: Responder = ok, port: int | None = None) -> None:
        self.port = port or free_port()
        self.responder = responder
        self.requests: list[Request] = []
        self.accepted: list[Request] = []  # answered 2xx
        self._cond = threading.Condition()
        self._server: _Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def answer(self, request: Request) -> Answer:
        status, headers, body = self.responder(request)
        with self._cond:
            self.requests.append(request)
            if 200 <= status < 300:
                self.accepted.append(request)
            self._cond.notify_all()
        return status, headers, body

    def start(self) -> HttpReceiver:
        self._server = _Server(self.port, self)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait_for(
        self, predicate: Callable[[list[Request]], bool], timeout_s: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not predicate(self.accepted):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout_s:g} s waiting for {what} "
                        f"({len(self.accepted)} accepted, {len(self.requests)} requests)"
                    )
                self._cond.wait(left)


class _MailHandler:
    def __init__(self, box: SmtpServer) -> None:
        self.box = box

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        with self.box.cond:
            self.box.messages.append(
                (
                    list(envelope.rcpt_tos),
                    message_from_bytes(envelope.content, policy=policy.default),
                )
            )
            self.box.cond.notify_all()
        return "250 OK"


class SmtpServer:
    """aiosmtpd on a free port, keeping (recipients, parsed message) of every mail."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[list[str], Message]] = []
        self.cond = threading.Condition()
        self.controller = Controller(_MailHandler(self), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> Self:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()
        # aiosmtpd leaves the server side of a STARTTLS connection to the garbage collector:
        # collect it here, so its ResourceWarning belongs to the test that caused it.
        gc.collect()

    def wait_for(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {count} mails, got {len(self.messages)}"
                    )
                self.cond.wait(left)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files): the mail server's, and the CA the
    client is told to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "smtp.crt", directory / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class TlsSmtpServer(SmtpServer):
    """SMTP that requires STARTTLS, then a login (`user`, `password`), before any mail."""

    def __init__(self, directory: Path, user: str, password: str) -> None:
        super().__init__()
        cert, key = self_signed(directory)
        self.ca_file = cert
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.logins: list[str] = []

        def authenticate(
            server: object, session: object, envelope: object, mechanism: str, data: object
        ) -> AuthResult:
            ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
                user.encode(),
                password.encode(),
            )
            if ok:
                self.logins.append(user)
            return AuthResult(success=ok)

        self.controller = Controller(
            _MailHandler(self),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_require_tls=True,
        )
