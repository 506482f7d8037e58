"""Real components for Berth's integration tests and demo.

Everything listens on loopback ports chosen at run time and is stopped by the
caller (the pytest fixtures stop them even when a test fails):

- TokenIssuer: a Harbor-like /service/token (GET only, POST -> 405, Basic auth of
  robot accounts, RS256 JWTs the CNCF registry accepts, anonymous -> empty access).
- Registry: the real CNCF distribution registry (docker-registry) with TLS and token auth.
- StorageServer: plain HTTP file server standing in for S3; rejects any Authorization.
- Berth: the binary under test.
- Containerd: a private containerd daemon driven with ctr.
- make_test_image(): a deterministic multi-arch OCI image layout.
"""

import base64
import datetime
import gzip
import hashlib
import http.server
import io
import json
import os
import re
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.parse
import urllib.request
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

PASSWORD_ALPHABET = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def dead_port():
    """A loopback port nothing listens on (for containerd's fallback server)."""
    return free_port()


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as e:  # noqa: BLE001 - keep polling
            last = e
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what} (last error: {last})")


def generate_password(n=24):
    rng = random.SystemRandom()
    return "".join(rng.choice(PASSWORD_ALPHABET) for _ in range(n))


# ---------------------------------------------------------------------------
# PKI


class Pki:
    """A throwaway CA and a server certificate for 127.0.0.1 and localhost."""

    def __init__(self, directory):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "berth test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        import ipaddress

        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = os.path.join(directory, "ca.pem")
        self.cert_file = os.path.join(directory, "server.pem")
        self.key_file = os.path.join(directory, "server.key")
        with open(self.ca_file, "wb") as f:
            f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
        with open(self.cert_file, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(self.key_file, "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.TraditionalOpenSSL,
                    serialization.NoEncryption(),
                )
            )

    def server_context(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


# ---------------------------------------------------------------------------
# Token issuer


def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def libtrust_kid(public_key):
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


class TokenIssuer:
    """Harbor's /service/token, closely enough for the CNCF registry and Berth.

    accounts: {username: (password, {repository_pattern_prefix: [actions]})}; a
    repository gets the actions of every prefix it starts with ("" = all).
    """

    def __init__(self, directory, pki, accounts, service="harbor-registry", issuer="berth-test-issuer", expires_in=1800):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.pki = pki
        self.accounts = accounts
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in  # None: leave expires_in out of the response
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "token signer")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .sign(self.key, hashes.SHA256())
        )
        self.bundle = os.path.join(directory, "token-signer.pem")
        with open(self.bundle, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        self.kid = libtrust_kid(self.key.public_key())
        self.requests = []  # (method, username or None, [scopes])
        self.issued = []  # (subject, token) of every token handed out
        self.lock = threading.Lock()
        self.port = free_port()
        self.realm = f"https://127.0.0.1:{self.port}/service/token"
        self._server = None
        self._thread = None

    def grants(self, username, password, scopes):
        access = []
        # An anonymous request gets what the "" account allows (Harbor's public
        # projects), or nothing.
        account = self.accounts.get(username if username is not None else "")
        if username is not None and account is not None and account[0] != password:
            return None  # wrong password: 401
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3 or parts[0] != "repository":
                continue
            name = ":".join(parts[1:-1])
            wanted = parts[-1].split(",")
            allowed = set()
            if account is not None:
                for prefix, actions in account[1].items():
                    if name.startswith(prefix):
                        allowed.update(actions)
            access.append({"type": "repository", "name": name, "actions": [a for a in wanted if a in allowed]})
        return access

    def make_token(self, subject, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {
            "iss": self.issuer,
            "sub": subject or "",
            "aud": self.service,
            "exp": now + (self.expires_in or 60),
            "nbf": now - 5,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        token = signing_input + "." + _b64url(sig)
        with self.lock:
            self.issued.append((subject, token))
        return token

    def start(self):
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status, body, ctype="application/json"):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802 - Harbor's token service is GET only
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with issuer.lock:
                    issuer.requests.append(("POST", None, []))
                self._send(405, '{"errors":[{"code":"UNSUPPORTED","message":"method not allowed"}]}')

            def do_GET(self):  # noqa: N802
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/service/token":
                    self._send(404, "{}")
                    return
                q = urllib.parse.parse_qs(url.query)
                scopes = []
                for s in q.get("scope", []):
                    scopes.extend(s.split(" "))
                username = password = None
                auth = self.headers.get("Authorization")
                if auth and auth.lower().startswith("basic "):
                    raw = base64.b64decode(auth[6:]).decode()
                    username, _, password = raw.partition(":")
                with issuer.lock:
                    issuer.requests.append(("GET", username, scopes))
                access = issuer.grants(username, password, scopes)
                if access is None or (username is not None and username not in issuer.accounts):
                    self._send(401, '{"errors":[{"code":"UNAUTHORIZED","message":"invalid credentials"}]}')
                    return
                token = issuer.make_token(username, access)
                body = {"token": token, "access_token": token,
                        "issued_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
                if issuer.expires_in is not None:
                    body["expires_in"] = issuer.expires_in
                self._send(200, json.dumps(body))

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._server.socket = self.pki.server_context().wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def token_requests(self, username=None):
        with self.lock:
            return [r for r in self.requests if username is None or r[1] == username]


# ---------------------------------------------------------------------------
# Storage server (stands in for S3 behind a registry's 307 redirects)


class StorageServer:
    def __init__(self, root, host="127.0.0.2"):
        self.root = root
        self.host = host
        self.port = free_port(host)
        self.requests = []  # (method, path, had_authorization)
        self.lock = threading.Lock()
        self._server = None

    @property
    def base_url(self):
        return f"http://{self.host}:{self.port}"

    def start(self):
        storage = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _serve(self, head):
                had_auth = self.headers.get("Authorization") is not None
                with storage.lock:
                    storage.requests.append((self.command, self.path, had_auth))
                if had_auth:
                    # What S3 does with a presigned URL plus an Authorization header.
                    body = b"<Error><Code>InvalidArgument</Code><Message>Only one auth mechanism allowed</Message></Error>"
                    self.send_response(400)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(body)
                    return
                path = os.path.normpath(urllib.parse.urlsplit(self.path).path).lstrip("/")
                full = os.path.join(storage.root, path)
                if not full.startswith(storage.root) or not os.path.isfile(full):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                size = os.path.getsize(full)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(size))
                self.end_headers()
                if not head:
                    with open(full, "rb") as f:
                        shutil.copyfileobj(f, self.wfile, 1 << 20)

            def do_GET(self):  # noqa: N802
                self._serve(False)

            def do_HEAD(self):  # noqa: N802
                self._serve(True)

        self._server = http.server.ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ---------------------------------------------------------------------------
# Processes


class Process:
    def __init__(self, name, argv, log_path, env=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.proc = None
        self._log = None

    def start(self):
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if self._log:
            self._log.close()
        return rc

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class Registry(Process):
    """The CNCF distribution registry with TLS and token auth (Harbor's shape)."""

    def __init__(self, directory, pki, issuer, storage_root, redirect_base=None, schema1=False, basic_auth=None):
        """schema1: convert schema-2 manifests to signed schema 1 for clients that name
        no schema-2 type, as Harbor's registry does (its config turns it on).
        basic_auth: {user: password} checked as Basic credentials on /v2/ itself
        (htpasswd) instead of the token flow: what Harbor accepts besides tokens
        (PROTOCOL.md §3, "Basic works directly on /v2"); `issuer` is then unused."""
        os.makedirs(directory, exist_ok=True)
        self.port = free_port()
        self.storage_root = storage_root
        middleware = ""
        if redirect_base:
            middleware = (
                "middleware:\n  storage:\n    - name: redirect\n      options:\n"
                f"        baseurl: {redirect_base}\n"
            )
        config = f"""version: 0.1
log:
  level: info
  formatter: json
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage_root}
  delete:
    enabled: true
{middleware}{"compatibility:" + chr(10) + "  schema1:" + chr(10) + "    enabled: true" + chr(10) if schema1 else ""}http:
  addr: 127.0.0.1:{self.port}
  secret: {generate_password()}
  tls:
    certificate: {pki.cert_file}
    key: {pki.key_file}
{self._auth(directory, issuer, basic_auth)}"""
        cfg = os.path.join(directory, "config.yml")
        with open(cfg, "w") as f:
            f.write(config)
        super().__init__("registry", ["docker-registry", "serve", cfg], os.path.join(directory, "registry.log"))
        self.ca_file = pki.ca_file

    @staticmethod
    def _auth(directory, issuer, basic_auth):
        if basic_auth:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                import crypt
            path = os.path.join(directory, "htpasswd")
            with open(path, "w") as f:
                for user, password in basic_auth.items():
                    f.write(f"{user}:{crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))}\n")
            return f"auth:\n  htpasswd:\n    realm: basic-realm\n    path: {path}\n"
        return (f"auth:\n  token:\n    realm: {issuer.realm}\n    service: {issuer.service}\n"
                f"    issuer: {issuer.issuer}\n    rootcertbundle: {issuer.bundle}\n")

    @property
    def endpoint(self):
        return f"https://127.0.0.1:{self.port}"

    def start(self):
        super().start()
        ctx = ssl.create_default_context(cafile=self.ca_file)

        def up():
            try:
                urllib.request.urlopen(self.endpoint + "/v2/", context=ctx, timeout=2)
            except urllib.error.HTTPError as e:
                return e.code == 401
            return True

        wait_for(up, what="registry to listen")
        return self

    def requests_seen(self):
        """(method, uri, status) of every request in the registry's access log so far.
        The registry writes a line after its response, so a request just answered may
        not be there yet: see settled_requests()."""
        import re

        out = []
        for line in self.log().splitlines():
            m = re.search(r'"([A-Z]+) (\S+) HTTP/[0-9.]+" (\d{3}) ', line)
            if m and not line.startswith("{") and "/__berth_marker_" not in m.group(2):
                out.append((m.group(1), m.group(2), int(m.group(3))))
        return out

    def settled_requests(self):
        """requests_seen() once every request answered before this call is logged: a
        marker request is sent, and the log is read once the marker is in it."""
        marker = f"/v2/__berth_marker_{uuid.uuid4().hex}/tags/list"
        ctx = ssl.create_default_context(cafile=self.ca_file)
        try:
            urllib.request.urlopen(self.endpoint + marker, context=ctx, timeout=5)
        except urllib.error.HTTPError:
            pass
        wait_for(lambda: marker in self.log(), timeout=10, what="the registry to log the marker request")
        return self.requests_seen()


# What a sanitized Berth (the CI's ASan+UBSan build) prints when it finds a bug: a
# leak at exit, a memory error, undefined behaviour. Any of them fails the session.
_SANITIZER_LINE = re.compile(r"ERROR: (LeakSanitizer|AddressSanitizer)|\.\w+:\d+:\d+: runtime error:")
SANITIZER_FINDINGS = []


def sanitizer_findings_in(path):
    """The first sanitizer report line in a Berth log, or None."""
    try:
        with open(path, "rb") as f:
            for line in f.read().decode(errors="replace").splitlines():
                if _SANITIZER_LINE.search(line):
                    return line
    except OSError:
        pass
    return None


class Berth(Process):
    def __init__(self, binary, directory, config_text, env=None, prefix=()):
        """prefix: a command Berth runs under (prlimit, say)."""
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self.config_path = os.path.join(directory, "berth.yaml")
        with open(self.config_path, "w") as f:
            f.write(config_text)
        full_env = dict(os.environ)
        full_env.update(env or {})
        super().__init__("berth", [*prefix, binary, "serve", "--config", self.config_path],
                         os.path.join(directory, "berth.log"), full_env)
        self.port = None
        self.admin_port = None

    def start(self):
        super().start()

        def listening():
            if not self.alive():
                raise RuntimeError("berth exited:\n" + self.log())
            for line in self.log().splitlines():
                if '"event":"listening"' in line:
                    rec = json.loads(line)
                    self.port = rec["port"]
                    self.admin_port = rec["admin_port"]
                    return True
            return False

        wait_for(listening, what="berth to listen")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10):
        rc = super().stop(sig, timeout)
        if (found := sanitizer_findings_in(self.log_path)) is not None:
            SANITIZER_FINDINGS.append(f"{self.log_path}: {found}")
        return rc

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name, **labels):
        """Sum of a metric's samples whose labels include `labels`."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric_name = head.split("{")[0]
            if metric_name != name:
                continue
            got = {}
            if "{" in head:
                for part in head[head.index("{") + 1 : head.rindex("}")].split(","):
                    if "=" in part:
                        k, _, v = part.partition("=")
                        got[k] = v.strip('"')
            if all(got.get(k) == str(v) for k, v in labels.items()):
                total += float(value)
        return total

    def access_log(self):
        out = []
        for line in self.log().splitlines():
            if '"event":"request"' in line:
                out.append(json.loads(line))
        return out


class Containerd(Process):
    def __init__(self, directory):
        os.makedirs(directory, exist_ok=True)
        self.dir = directory
        self.sock = os.path.join(directory, "containerd.sock")
        cfg = os.path.join(directory, "config.toml")
        with open(cfg, "w") as f:
            f.write(f"""version = 2
root = "{directory}/root"
state = "{directory}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = "{directory}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{directory}/opt"
""")
        super().__init__("containerd", ["containerd", "--config", cfg], os.path.join(directory, "containerd.log"))

    def start(self):
        super().start()

        def up():
            if not self.alive():
                raise RuntimeError("containerd exited:\n" + self.log())
            return subprocess.run(["ctr", "--address", self.sock, "version"], capture_output=True).returncode == 0

        wait_for(up, timeout=30, what="containerd to start")
        return self

    def ctr(self, *args, check=True, timeout=300):
        return subprocess.run(["ctr", "--address", self.sock, *args], capture_output=True, text=True,
                              check=check, timeout=timeout)

    def pull(self, ref, hosts_dir, namespace="t"):
        """`ctr images pull` through the hosts.toml files in `hosts_dir`; the CompletedProcess, never raising."""
        return self.ctr("-n", namespace, "images", "pull", "--hosts-dir", str(hosts_dir), "--snapshotter", "native",
                        ref, check=False)


def pull_with_fresh_containerd(directory, hosts_dir, ref):
    """Starts a containerd of its own (containerd shares content across namespaces),
    pulls `ref`, stops it. Returns the pull's CompletedProcess."""
    ctd = Containerd(str(directory)).start()
    try:
        return ctd.pull(ref, hosts_dir)
    finally:
        ctd.stop()


def write_hosts_toml(certs_dir, registry_host, mirror_url, fallback_port):
    d = os.path.join(certs_dir, registry_host)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "hosts.toml"), "w") as f:
        f.write(f'server = "http://127.0.0.1:{fallback_port}"\n\n'
                f'[host."{mirror_url}"]\n  capabilities = ["pull", "resolve"]\n')


# ---------------------------------------------------------------------------
# Test image


def _gzip_tar(files, level=1):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
        gz.write(tar_bytes)
    return out.getvalue(), "sha256:" + hashlib.sha256(tar_bytes).hexdigest()


def _put_blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest)
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}


def make_test_image(layout, big_layer_mb=200, seed=20261121):
    """A deterministic two-platform OCI image layout tagged 'v1'.

    linux/amd64: shared layer + big layer; linux/arm64: shared layer + small layer.
    Returns {"index": digest, "manifests": {platform: digest}, "blobs": [digests]}.
    """
    stamp = os.path.join(layout, "summary.json")
    if os.path.exists(stamp):
        with open(stamp) as f:
            summary = json.load(f)
        if summary.get("big_layer_mb") == big_layer_mb and summary.get("seed") == seed:
            return summary
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    rng = random.Random(seed)
    shared, shared_diff = _gzip_tar([("shared/data.bin", rng.randbytes(2 * 1024 * 1024)), ("etc/hello", b"hello from berth\n")])
    big, big_diff = _gzip_tar([("big/data.bin", rng.randbytes(big_layer_mb * 1024 * 1024))])
    small, small_diff = _gzip_tar([("arm/data.bin", rng.randbytes(300 * 1024))])
    layer_type = "application/vnd.oci.image.layer.v1.tar+gzip"
    manifests = {}
    index_entries = []
    blobs = []
    for arch, layers in (("amd64", [(shared, shared_diff), (big, big_diff)]), ("arm64", [(shared, shared_diff), (small, small_diff)])):
        layer_descs = []
        for data, _ in layers:
            d = _put_blob(layout, data)
            layer_descs.append({"mediaType": layer_type, **d})
            blobs.append(d["digest"])
        config = json.dumps({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in layers]},
        }, sort_keys=True).encode()
        cdesc = _put_blob(layout, config)
        blobs.append(cdesc["digest"])
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
            "layers": layer_descs,
        }, sort_keys=True).encode()
        mdesc = _put_blob(layout, manifest)
        manifests[arch] = mdesc["digest"]
        index_entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
                              "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": index_entries}, sort_keys=True).encode()
    idesc = _put_blob(layout, index)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", **idesc,
                                                      "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}, f)
    summary = {"index": idesc["digest"], "manifests": manifests, "blobs": sorted(set(blobs)),
               "big_layer": "sha256:" + hashlib.sha256(big).hexdigest(), "big_layer_mb": big_layer_mb, "seed": seed}
    with open(stamp, "w") as f:
        json.dump(summary, f)
    return summary


def skopeo_push(layout, dest, creds, fmt=None):
    argv = ["skopeo", "copy", "--all", "--dest-tls-verify=false", "--dest-creds", creds]
    if fmt:
        argv += ["--format", fmt]
    argv += [f"oci:{layout}:v1", dest]
    subprocess.run(argv, check=True, capture_output=True, timeout=600)


def skopeo_inspect_raw(ref, creds=None, tls_verify=False):
    argv = ["skopeo", "inspect", "--raw", f"--tls-verify={'true' if tls_verify else 'false'}"]
    if creds:
        argv += ["--creds", creds]
    else:
        argv += ["--no-creds"]
    argv.append(ref)
    return subprocess.run(argv, check=True, capture_output=True, timeout=120).stdout


def http_request(url, method="GET", headers=None, timeout=30, data=None):
    """(status, headers, body) without raising on HTTP errors."""
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


CONTAINERD_ACCEPT = ("application/vnd.docker.distribution.manifest.v2+json, "
                     "application/vnd.docker.distribution.manifest.list.v2+json, "
                     "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*")


def resolve_like_containerd(base_url, repo, tag, ns):
    """The manifest requests containerd makes for linux/amd64: HEAD the tag, GET
    what it names, and, for an index or list, GET the amd64 manifest. Returns the
    digests; an unexpected answer raises AssertionError."""
    def get(ref, method="GET", accept=CONTAINERD_ACCEPT):
        return http_request(f"{base_url}/v2/{repo}/manifests/{ref}?ns={urllib.parse.quote(ns)}", method=method,
                            headers={"Accept": accept})

    s, h, _ = get(tag, method="HEAD")
    assert s == 200, s
    top = h["Docker-Content-Digest"]
    s, h, body = get(top, accept=f"{h['Content-Type']}, */*")
    assert s == 200 and h["Docker-Content-Digest"] == top
    doc = json.loads(body)
    if doc.get("mediaType") not in ("application/vnd.oci.image.index.v1+json",
                                    "application/vnd.docker.distribution.manifest.list.v2+json"):
        return [top]
    child = next(m for m in doc["manifests"] if m.get("platform", {}).get("architecture") == "amd64")
    s, h, _ = get(child["digest"], accept=f"{child['mediaType']}, */*")
    assert s == 200 and h["Docker-Content-Digest"] == child["digest"]
    return [top, child["digest"]]


def make_small_image(layout, seed, tag="v1", history=False):
    """A one-layer linux/amd64 OCI image with content unique to `seed` (with a config
    history, which a registry needs to convert it to schema 1).
    Returns {"manifest", "config", "layer"} digests."""
    shutil.rmtree(layout, ignore_errors=True)
    os.makedirs(os.path.join(layout, "blobs", "sha256"))
    rng = random.Random(seed)
    layer, diff = _gzip_tar([("unique/data.bin", rng.randbytes(256 * 1024))])
    ldesc = _put_blob(layout, layer)
    config = {"architecture": "amd64", "os": "linux", "seed": seed, "rootfs": {"type": "layers", "diff_ids": [diff]}}
    if history:
        config["history"] = [{"created": "2026-01-01T00:00:00Z", "created_by": f"berth test {seed}"}]
    config = json.dumps(config, sort_keys=True).encode()
    cdesc = _put_blob(layout, config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **cdesc},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **ldesc}],
    }, sort_keys=True).encode()
    mdesc = _put_blob(layout, manifest)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **mdesc,
                                                      "annotations": {"org.opencontainers.image.ref.name": tag}}]}, f)
    return {"manifest": mdesc["digest"], "config": cdesc["digest"], "layer": ldesc["digest"],
            "manifest_size": mdesc["size"], "layer_size": ldesc["size"]}


def blob_data_path(storage_root, digest):
    hexd = digest.split(":", 1)[1]
    return os.path.join(storage_root, "docker", "registry", "v2", "blobs", "sha256", hexd[:2], hexd, "data")


class FaultProxy:
    """A TCP proxy to an upstream that cuts a connection once it has relayed
    `cut_after` bytes from the upstream (TLS passes through untouched). It does so
    `cuts` times in all, then relays faithfully."""

    def __init__(self, target_port, cut_after=None, cuts=1, rate=None, host="127.0.0.1", target_host="127.0.0.1",
                 flip_at=None):
        """rate: bytes per second from the upstream, per connection (None: unlimited).
        flip_at: on every connection, the byte at this offset of what the upstream
        sends is inverted (a corrupting link or a peer with a damaged copy)."""
        self.target_port = target_port
        self.target_host = target_host
        self.flip_at = flip_at
        self.flips = 0
        self.cut_after = cut_after if cut_after is not None else float("inf")
        self.rate = rate
        self.cuts_left = cuts
        self.cut_count = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, 0))
        self.listener.listen(64)
        self.host = host
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((self.target_host, self.target_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src, dst, from_upstream):
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_upstream:
                    with self.lock:
                        cut = self.cuts_left > 0 and sent + len(data) > self.cut_after
                        if cut:
                            self.cuts_left -= 1
                            self.cut_count += 1
                    if cut:
                        dst.sendall(data[: max(0, self.cut_after - sent)])
                        break
                if from_upstream and self.flip_at is not None and sent <= self.flip_at < sent + len(data):
                    i = self.flip_at - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
                    with self.lock:
                        self.flips += 1
                dst.sendall(data)
                sent += len(data)
                if from_upstream and self.rate:
                    if sent == len(data):
                        started = time.monotonic()
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        # shutdown() first: a bare close() sends nothing while the other pump thread
        # is still blocked in recv() on the same socket.
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def stop(self):
        self.stopped = True
        self.listener.close()


def write_dockerconfigjson(path, registry_host, username, password):
    """A kubernetes.io/dockerconfigjson file with one `auth` entry, mode 0600."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"auths": {registry_host: {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}}}, f)
    os.chmod(path, 0o600)


class StandInHarbor:
    """A Harbor stand-in for the demo and the benchmarks: TLS, a token service with a
    pull-only robot and an admin, the CNCF registry, and the test image pushed as
    library/app:v1. `stop()` stops all of it."""

    ROBOT = "robot$cluster-pull"

    def __init__(self, work, big_layer_mb):
        self.work = work
        self.pki = Pki(os.path.join(work, "pki"))
        self.robot_password = generate_password()
        self.admin_password = generate_password()
        self.issuer = TokenIssuer(os.path.join(work, "issuer"), self.pki, {
            self.ROBOT: (self.robot_password, {"library/": ["pull"]}),
            "admin": (self.admin_password, {"": ["pull", "push"]}),
        }).start()
        try:
            self.storage = os.path.join(work, "storage")
            self.registry = Registry(os.path.join(work, "registry"), self.pki, self.issuer, self.storage).start()
            self.image = make_test_image(os.path.join(work, "layout"), big_layer_mb=big_layer_mb)
            skopeo_push(os.path.join(work, "layout"), f"docker://127.0.0.1:{self.registry.port}/library/app:v1",
                        f"admin:{self.admin_password}")
        except BaseException:
            self.stop()
            raise

    def robot_secret(self, path, registry_host):
        write_dockerconfigjson(path, registry_host, self.ROBOT, self.robot_password)
        return path

    def robot_token(self):
        """A pull token for library/app, as a client with the robot's password gets it."""
        r = subprocess.run(["curl", "-sf", "--cacert", self.pki.ca_file, "-u", f"{self.ROBOT}:{self.robot_password}",
                            f"{self.issuer.realm}?service={self.issuer.service}&scope=repository:library/app:pull"],
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)["token"]

    def stop(self):
        if getattr(self, "registry", None):
            self.registry.stop()
        self.issuer.stop()


class RedisServer(Process):
    """A real redis-server on a loopback port chosen at run time (Dragonfly's stand-in)."""

    def __init__(self, directory, port=None, password=None):
        os.makedirs(directory, exist_ok=True)
        self.port = port or free_port()
        self.password = password
        extra = ["--requirepass", password] if password else []
        super().__init__("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", directory, "--loglevel", "warning", *extra],
                         os.path.join(directory, "redis.log"))

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        super().start()
        wait_for(lambda: self.command("PING") == "PONG", what="redis-server to answer")
        return self

    def command(self, *args):
        """One command over RESP; returns str/int/None/list, or raises on an error reply."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                out = b"*%d\r\n" % len(args)
                for a in args:
                    a = a if isinstance(a, bytes) else str(a).encode()
                    out += b"$%d\r\n%s\r\n" % (len(a), a)
                if self.password:
                    auth = b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(self.password), self.password.encode())
                    s.sendall(auth)
                    f = s.makefile("rb")
                    _resp_read(f)
                    s.sendall(out)
                    return _resp_read(f)
                s.sendall(out)
                return _resp_read(s.makefile("rb"))
        except ConnectionRefusedError:
            return None


def _resp_read(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise RuntimeError(f"bad RESP line {line!r}")


class FaultyUpstream:
    """A plain-HTTP stand-in for Harbor in front of the real registry (HTTPS): it
    forwards every request with its headers and relays the answer, except where a
    rule says to misbehave. A rule matches a method and a path regex, applies
    `times` times (None: always), and may:
      status=N         answer N with a JSON error body instead of forwarding
      framing=...      "length" (as received), "chunked" or "close" (no length, close)
      flip=OFFSET      flip the byte at OFFSET of the body
      cut_after=N      close the connection after N body bytes
      trickle=BPS      send the body at BPS bytes per second
      length_delta=D   announce Content-Length + D
      digest=VALUE     replace Docker-Content-Digest
      realm=URL        replace the realm of a WWW-Authenticate challenge
      add_headers={}   send these headers too
    It counts what it saw, so a test waits for a condition instead of sleeping."""

    def __init__(self, registry_port, ca_file):
        self.registry_port = registry_port
        self.ca_file = ca_file
        self.lock = threading.Lock()
        self.rules = []
        self.seen = []  # (method, path, range header, status)
        self.authorizations = []  # the Authorization header of every request (None: none)
        upstream = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                upstream._serve(self)

            def do_HEAD(self):  # noqa: N802
                upstream._serve(self)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    def add(self, method, pattern, times=None, **fault):
        import re

        with self.lock:
            self.rules.append({"method": method, "pattern": re.compile(pattern), "times": times, "fault": fault,
                               "hits": 0})

    def clear(self):
        with self.lock:
            self.rules = []

    def count(self, method, pattern, status=None):
        """Requests seen for `method` and a path matching `pattern` (answered with
        `status`, when given)."""
        return len(self.requests(method, pattern, status))

    def requests(self, method, pattern, status=None):
        import re

        rx = re.compile(pattern)
        with self.lock:
            return [(m, p, r, st) for m, p, r, st in self.seen
                    if m == method and rx.search(p) and (status is None or st == status)]

    def _rule_for(self, method, path):
        with self.lock:
            for rule in self.rules:
                if rule["method"] == method and rule["pattern"].search(path) and (
                        rule["times"] is None or rule["hits"] < rule["times"]):
                    return rule
        return None

    def _serve(self, h):
        # Body faults apply to successful answers only (not to the 401 that starts
        # the token dance); an injected status replaces the answer altogether.
        rule = self._rule_for(h.command, h.path)
        fault = rule["fault"] if rule else {}
        entry = [h.command, h.path, h.headers.get("Range"), None]
        with self.lock:
            self.authorizations.append(h.headers.get("Authorization"))
        if "status" in fault:
            with self.lock:
                rule["hits"] += 1
                entry[3] = fault["status"]
                self.seen.append(tuple(entry))
            body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": "injected"}]}).encode()
            h.send_response(fault["status"])
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(body)
            return
        ctx = ssl.create_default_context(cafile=self.ca_file)
        import http.client

        conn = http.client.HTTPSConnection("127.0.0.1", self.registry_port, context=ctx, timeout=60)
        headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(h.command, h.path, headers=headers)
        resp = conn.getresponse()
        with self.lock:
            entry[3] = resp.status
            self.seen.append(tuple(entry))
            applies = rule is not None and (resp.status in (200, 206) or set(fault) <= {"realm"})
            if applies:
                rule["hits"] += 1
        if not applies:
            fault = {}
        framing = fault.get("framing", "length")
        h.send_response(resp.status)
        length = resp.getheader("Content-Length")
        for k, v in resp.getheaders():
            kl = k.lower()
            if kl in ("content-length", "transfer-encoding", "connection"):
                continue
            if kl == "docker-content-digest" and "digest" in fault:
                v = fault["digest"]
            if kl == "www-authenticate" and "realm" in fault:
                import re

                v = re.sub(r'realm="[^"]*"', f'realm="{fault["realm"]}"', v)
            h.send_header(k, v)
        for k, v in fault.get("add_headers", {}).items():
            h.send_header(k, v)
        if h.command == "HEAD" or resp.status in (204, 304):
            if length is not None:
                h.send_header("Content-Length", str(int(length) + fault.get("length_delta", 0)))
            h.end_headers()
            conn.close()
            return
        if framing == "length" and length is not None:
            h.send_header("Content-Length", str(int(length) + fault.get("length_delta", 0)))
        elif framing == "chunked":
            h.send_header("Transfer-Encoding", "chunked")
        else:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        sent = 0
        started = time.monotonic()
        cut_after = fault.get("cut_after")
        try:
            while True:
                data = resp.read(16384 if fault.get("trickle") else 65536)
                if not data:
                    break
                flip = fault.get("flip")
                if flip is not None and sent <= flip < sent + len(data):
                    data = bytearray(data)
                    data[flip - sent] ^= 0xFF
                    data = bytes(data)
                if cut_after is not None and sent + len(data) > cut_after:
                    data = data[: cut_after - sent]
                    self._write(h, data, framing)
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fault.get("trickle"):
                    for i in range(0, len(data), 512):
                        self._write(h, data[i:i + 512], framing)
                        sent += len(data[i:i + 512])
                        ahead = sent / fault["trickle"] - (time.monotonic() - started)
                        if ahead > 0:
                            time.sleep(ahead)
                    continue
                self._write(h, data, framing)
                sent += len(data)
            if framing == "chunked":
                h.wfile.write(b"0\r\n\r\n")
            elif framing == "close":
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            h.close_connection = True
        finally:
            conn.close()

    @staticmethod
    def _write(h, data, framing):
        if not data:
            return
        if framing == "chunked":
            h.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            h.wfile.write(data)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def raw_get(port, target, headers=None, timeout=60, method="GET"):
    """One request over a fresh connection; reads until the server closes or the body
    is complete. Returns (status, headers dict (lower-case), body bytes, complete),
    where `complete` says the body arrived whole by its own framing (Content-Length
    reached, or the last chunk of a chunked body); a cut connection gives False."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.request(method, target, headers=headers or {})
    resp = conn.getresponse()
    hdrs = {k.lower(): v for k, v in resp.getheaders()}
    try:
        body = resp.read()
        complete = True
    except http.client.IncompleteRead as e:
        body = e.partial
        complete = False
    except (ConnectionError, OSError):
        body = b""
        complete = False
    conn.close()
    return resp.status, hdrs, body, complete
