"""Real local servers speaking the push services' wire formats, scripted per device token, and test keys.

* :class:`FakeFcm`: FCM HTTP v1 (``POST /v1/projects/<id>/messages:send``) and Google's OAuth 2.0 token
  endpoint (``POST /token``, JWT bearer grant), over HTTP/1.1 (stdlib ``ThreadingHTTPServer``). The token
  endpoint verifies the assertion's RS256 signature and claims with the service account's public key;
  the send endpoint accepts only the access tokens it issued.
* :class:`FakeApns`: the APNs provider API (``POST /3/device/<token>``) over **HTTP/2** (the ``h2``
  library, one thread per connection): TLS with ALPN ``h2`` and a certificate made at runtime (like
  api.push.apple.com), or clear-text HTTP/2 with prior knowledge (h2c). HTTP/1.1 is answered too (ALPN
  ``http/1.1``, or a clear-text request without the HTTP/2 preface), for the ``http2 = false`` setting.
  It verifies the provider token's ES256 signature, ``iss`` and ``kid``.

Each records every request and answers it by the next reply scripted for its device token
(:meth:`PushScript.script`), then ``"ok"``. Keys are generated at runtime; none is committed.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import json
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

__all__ = [
    "APNS_KEY_ID",
    "APNS_TEAM_ID",
    "APNS_TOPIC",
    "FCM_PROJECT",
    "ApnsKey",
    "FakeApns",
    "FakeFcm",
    "Recorded",
    "ServiceAccountKey",
    "apns_key",
    "apns_server",
    "fcm_server",
    "make_apns_key",
    "make_service_account",
    "start_apns",
    "start_fcm",
]

FCM_PROJECT = "ck-test-project"
APNS_TEAM_ID = "TEAM123456"
APNS_KEY_ID = "KEY1234567"
APNS_TOPIC = "app.connectionkey.ios"
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
_BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


# -- keys ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceAccountKey:
    """A Google service-account key file (``info``, as JSON text in ``json``) and its public key."""

    info: dict[str, str]
    public_pem: bytes

    @property
    def json(self) -> str:
        return json.dumps(self.info)


@dataclass(frozen=True)
class ApnsKey:
    """An APNs auth key (``.p8`` PEM) and its public key."""

    private_pem: str
    public_pem: bytes


def _public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_service_account(token_uri: str, project_id: str = FCM_PROJECT, *, fresh: bool = False) -> ServiceAccountKey:
    """A service account whose ``token_uri`` is ``token_uri``: an RSA 2048 key made once per test run
    (``fresh``: a new one)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048) if fresh else _rsa_key()
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "test-key-1",
        "private_key": _private_pem(key),
        "client_email": f"push@{project_id}.iam.gserviceaccount.com",
        "client_id": "1234567890",
        "token_uri": token_uri,
    }
    return ServiceAccountKey(info, _public_pem(key))


def make_apns_key() -> ApnsKey:
    """A fresh EC P-256 key, as Apple issues for token authentication."""
    key = ec.generate_private_key(ec.SECP256R1())
    return ApnsKey(_private_pem(key), _public_pem(key))


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A CA-flagged certificate for 127.0.0.1/localhost and its key, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake push server")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fake-push-cert.pem", directory / "fake-push-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_text(_private_pem(key))
    return cert_path, key_path


# -- shared recording and scripting ----------------------------------------------------------------


@dataclass
class Recorded:
    """One request a fake received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str = "HTTP/1.1"

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class PushScript:
    """Per-token scripted replies and the record of requests; shared with the server threads."""

    requests: list[Recorded] = field(default_factory=list)
    replies: defaultdict[str, deque[str]] = field(default_factory=lambda: defaultdict(deque))
    retry_after: str | None = None  # sent with 429 and 503 replies when set
    lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, token: str, *replies: str) -> None:
        """Answer the next sends to ``token`` with ``replies`` in order, then ``"ok"``."""
        with self.lock:
            self.replies[token].extend(replies)

    def next_reply(self, token: str) -> str:
        with self.lock:
            queue = self.replies.get(token)
            return queue.popleft() if queue else "ok"

    def record(self, request: Recorded) -> None:
        with self.lock:
            self.requests.append(request)

    def sends(self, path_part: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if path_part in r.path]


def _quiet_errors(server: socketserver.BaseServer) -> None:
    server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]


# -- FCM -------------------------------------------------------------------------------------------


@dataclass
class FakeFcm(PushScript):
    """FCM v1 and the OAuth token endpoint. Replies per token: ``ok``, ``unregistered`` (404
    UNREGISTERED), ``bad_token`` (400 INVALID_ARGUMENT on ``message.token``), ``bad_payload`` (400
    INVALID_ARGUMENT on another field), ``sender_mismatch`` (403), ``quota`` (429 QUOTA_EXCEEDED),
    ``unavailable`` (503), ``internal`` (500), ``unauthenticated`` (401: the access token is refused).
    ``token_replies`` scripts the token endpoint (``ok``, ``invalid_grant``, ``unavailable``)."""

    port: int = 0
    project_id: str = FCM_PROJECT
    account: ServiceAccountKey | None = None  # whose assertions the token endpoint accepts
    token_lifetime: int = 3600
    issued: list[str] = field(default_factory=list)
    assertions: list[dict[str, Any]] = field(default_factory=list)
    token_replies: deque[str] = field(default_factory=deque)
    clock: Callable[[], float] = time.time  # what the token endpoint checks assertion times against

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def answer(self, request: Recorded) -> tuple[int, dict[str, str], dict[str, Any]]:
        self.record(request)
        if request.path == "/token":
            return self._token(request)
        if request.path != f"/v1/projects/{self.project_id}/messages:send":
            return 404, {}, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}}
        with self.lock:
            known = request.headers.get("authorization", "").removeprefix("Bearer ") in self.issued
        if not known:
            return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        token = request.json()["message"]["token"]
        reply = self.next_reply(token)
        retry = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
        match reply:
            case "ok":
                return 200, {}, {"name": f"projects/{self.project_id}/messages/{len(self.requests)}"}
            case "unregistered":
                return _fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")
            case "bad_token":
                return _fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration "
                                  "token", "INVALID_ARGUMENT", field="message.token")  # fmt: skip
            case "bad_payload":
                return _fcm_error(400, "INVALID_ARGUMENT", "Invalid value", "INVALID_ARGUMENT",
                                  field="message.android.ttl")  # fmt: skip
            case "sender_mismatch":
                return _fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")
            case "quota":
                status, headers, body = _fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED")
                return status, {**headers, **retry}, body
            case "unavailable":
                status, headers, body = _fcm_error(503, "UNAVAILABLE", "The service is unavailable.", "UNAVAILABLE")
                return status, {**headers, **retry}, body
            case "internal":
                return _fcm_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL")
            case "unauthenticated":
                return _fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        raise AssertionError(f"unknown reply {reply!r}")

    def _token(self, request: Recorded) -> tuple[int, dict[str, str], dict[str, Any]]:
        form = urllib.parse.parse_qs(request.body.decode())
        with self.lock:
            reply = self.token_replies.popleft() if self.token_replies else "ok"
        if reply == "unavailable":
            return 503, {}, {"error": "temporarily_unavailable"}
        if reply == "invalid_grant" or form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid grant"}
        try:
            assert self.account is not None
            claims = jwt.decode(
                form["assertion"][0],
                self.account.public_pem,
                algorithms=["RS256"],
                audience=self.token_uri,
                options={"verify_exp": False, "verify_iat": False, "require": ["iss", "scope", "iat", "exp"]},
            )
        except (jwt.InvalidTokenError, KeyError):
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        now = self.clock()
        if not claims["iat"] - 60 <= now < claims["exp"] or claims["exp"] - claims["iat"] > 3600:
            return 400, {}, {"error": "invalid_grant", "error_description": "Invalid JWT: token times."}
        with self.lock:
            self.assertions.append(claims)
            access_token = f"ya29.fake-{len(self.issued) + 1}"
            self.issued.append(access_token)
        return 200, {}, {"access_token": access_token, "expires_in": self.token_lifetime, "token_type": "Bearer"}


def _fcm_error(
    code: int, status: str, message: str, error_code: str | None = None, field: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": _FCM_ERROR, "errorCode": error_code})
    if field:
        details.append({"@type": _BAD_REQUEST, "fieldViolations": [{"field": field, "description": message}]})
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return code, {}, {"error": error}


class _FcmHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _FcmServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, payload = self.server.fake.answer(Recorded("POST", self.path, headers, body))
        raw = json.dumps(payload).encode()
        with suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(raw)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


class _FcmServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeFcm) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _FcmHandler)
        _quiet_errors(self)


@contextmanager
def start_fcm() -> Iterator[FakeFcm]:
    """A running fake FCM with its service account (``fake.account``, token URI pointing at it)."""
    fake = FakeFcm()
    server = _FcmServer(fake)
    fake.port = server.server_address[1]
    fake.account = make_service_account(fake.token_uri)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# -- APNs ------------------------------------------------------------------------------------------


@dataclass
class FakeApns(PushScript):
    """The APNs provider API. Replies per token: ``ok``, ``unregistered`` (410), ``bad_token`` (400
    BadDeviceToken), ``not_for_topic`` (400 DeviceTokenNotForTopic), ``too_many`` (429 TooManyRequests),
    ``internal`` (500), ``unavailable`` (503 ServiceUnavailable), ``expired_provider_token`` (403),
    ``too_large`` (413 PayloadTooLarge). A provider token that does not verify gets 403
    InvalidProviderToken."""

    port: int = 0
    tls: bool = True
    public_pem: bytes = b""
    team_id: str = APNS_TEAM_ID
    key_id: str = APNS_KEY_ID
    ca_file: str = ""
    clock: Callable[[], float] = time.time  # provider tokens older than an hour are refused
    connections: int = 0  # connections accepted

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def answer(self, request: Recorded) -> tuple[int, dict[str, str], bytes]:
        self.record(request)
        apns_id = f"00000000-0000-0000-0000-{len(self.requests):012d}"
        if request.method != "POST" or not request.path.startswith("/3/device/"):
            return 404, {"apns-id": apns_id}, b'{"reason": "BadPath"}'
        authorized = self._authorized(request.headers.get("authorization", ""))
        if authorized is None:
            return 403, {"apns-id": apns_id}, b'{"reason": "InvalidProviderToken"}'
        if self.clock() - authorized > 3600:
            return 403, {"apns-id": apns_id}, b'{"reason": "ExpiredProviderToken"}'
        token = request.path.removeprefix("/3/device/")
        reply = self.next_reply(token)
        retry = {"retry-after": self.retry_after} if self.retry_after is not None else {}
        failures = {
            "unregistered": (410, {}, {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}),
            "bad_token": (400, {}, {"reason": "BadDeviceToken"}),
            "not_for_topic": (400, {}, {"reason": "DeviceTokenNotForTopic"}),
            "too_many": (429, retry, {"reason": "TooManyRequests"}),
            "internal": (500, {}, {"reason": "InternalServerError"}),
            "unavailable": (503, retry, {"reason": "ServiceUnavailable"}),
            "expired_provider_token": (403, {}, {"reason": "ExpiredProviderToken"}),
            "too_large": (413, {}, {"reason": "PayloadTooLarge"}),
        }
        if reply == "ok":
            return 200, {"apns-id": apns_id}, b""
        status, headers, body = failures[reply]
        return status, {"apns-id": apns_id, **headers}, json.dumps(body).encode()

    def _authorized(self, authorization: str) -> int | None:
        """The provider token's ``iat`` when it verifies (signature, ``kid``, ``iss``), else ``None``."""
        scheme, _, token = authorization.partition(" ")
        if scheme != "bearer" or not self.public_pem:
            return None
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token, self.public_pem, algorithms=["ES256"], options={"require": ["iss", "iat"], "verify_iat": False}
            )
        except jwt.InvalidTokenError:
            return None
        if header.get("kid") != self.key_id or claims["iss"] != self.team_id:
            return None
        return int(claims["iat"])


class _ApnsHttp1Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 on an accepted (maybe TLS) socket, for the ``http2 = false`` setting."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    fake: FakeApns

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra, payload = self.fake.answer(Recorded("POST", self.path, headers, body, "HTTP/1.1"))
        with suppress(OSError):
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


def _serve_h2(sock: socket.socket, fake: FakeApns) -> None:
    """One HTTP/2 connection: requests are answered as their streams end."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams: dict[int, tuple[dict[str, str], bytearray]] = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                streams[event.stream_id] = (dict(event.headers), bytearray())  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                streams[event.stream_id][1].extend(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                headers, body = streams.pop(event.stream_id)
                request = Recorded(
                    headers.get(":method", ""),
                    headers.get(":path", ""),
                    {k: v for k, v in headers.items() if not k.startswith(":")},
                    bytes(body),
                    "HTTP/2",
                )
                status, extra, payload = fake.answer(request)
                response = [(":status", str(status)), ("content-length", str(len(payload)))]
                conn.send_headers(event.stream_id, response + list(extra.items()), end_stream=not payload)
                if payload:
                    conn.send_data(event.stream_id, payload, end_stream=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sock.sendall(conn.data_to_send())
                return
        sock.sendall(conn.data_to_send())


class _ApnsConnection(socketserver.BaseRequestHandler):
    server: _ApnsServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        fake = self.server.fake
        with fake.lock:
            fake.connections += 1
        if self.server.ssl_context is not None:
            sock = self.server.ssl_context.wrap_socket(sock, server_side=True)
            self.server.track(sock)
        try:
            if isinstance(sock, ssl.SSLSocket):
                http2 = sock.selected_alpn_protocol() == "h2"
            else:
                sock.settimeout(5)
                http2 = sock.recv(len(_H2_PREFACE), socket.MSG_PEEK | socket.MSG_WAITALL) == _H2_PREFACE
                sock.settimeout(None)
            if http2:
                _serve_h2(sock, fake)
            else:
                handler = type("Handler", (_ApnsHttp1Handler,), {"fake": fake})
                handler(sock, self.client_address, self.server)
        finally:
            with suppress(OSError):
                sock.close()


class _ApnsServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fake: FakeApns, ssl_context: ssl.SSLContext | None) -> None:
        self.fake = fake
        self.ssl_context = ssl_context
        self._open: list[socket.socket] = []
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _ApnsConnection)
        _quiet_errors(self)

    def track(self, sock: socket.socket) -> None:
        with self._open_lock:
            self._open.append(sock)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.track(request)
        super().process_request(request, client_address)

    def close_connections(self) -> None:
        with self._open_lock:
            for sock in self._open:
                with suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._open.clear()


@contextmanager
def start_apns(public_pem: bytes, tmp_dir: Path, *, tls: bool = True) -> Iterator[FakeApns]:
    """A running fake APNs: TLS (ALPN h2 or http/1.1, its CA in ``fake.ca_file``) or clear text (h2c
    prior knowledge or HTTP/1.1)."""
    fake = FakeApns(tls=tls, public_pem=public_pem)
    context = None
    if tls:
        cert, key = _self_signed(tmp_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["h2", "http/1.1"])
        fake.ca_file = str(cert)
    server = _ApnsServer(fake, context)
    fake.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        thread.join(timeout=5)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def apns_key() -> ApnsKey:
    return make_apns_key()


@pytest.fixture
def fcm_server() -> Iterator[FakeFcm]:
    """A fake FCM and its service account (``fcm_server.account.json``)."""
    with start_fcm() as fake:
        yield fake


@pytest.fixture
def apns_server(apns_key: ApnsKey, tmp_path: Path) -> Iterator[FakeApns]:
    """A fake APNs over TLS (HTTP/2 by ALPN) that trusts ``apns_key``."""
    with start_apns(apns_key.public_pem, tmp_path) as fake:
        yield fake
