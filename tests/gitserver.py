"""Test helpers for repository workspaces: local repositories, a git wrapper that traces and
holds calls, and a smart-HTTP git server (``git http-backend`` behind Basic auth).

No network: the server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import gzip
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Final

GIT: Final = shutil.which("git") or "git"
EXEC_PATH: Final = subprocess.run([GIT, "--exec-path"], capture_output=True, text=True, check=True).stdout
BACKEND: Final = str(Path(EXEC_PATH.strip()) / "git-http-backend")
IDENTITY: Final = (
    "-c",
    "user.name=Test",
    "-c",
    "user.email=test@example.invalid",
    "-c",
    "commit.gpgsign=false",
)


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git for a test's own setup (not through the code under test); its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update({"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"})
    done = subprocess.run(
        [GIT, *IDENTITY, *args], cwd=cwd, capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def make_repo(path: Path, files: dict[str, str] | None = None, *, branch: str = "main") -> Path:
    """A repository at ``path`` with one commit of ``files`` on ``branch``."""
    path.mkdir(parents=True)
    git("init", "--quiet", "-b", branch, str(path), cwd=path)
    for name, text in (files or {"README.md": f"# {path.name}\n"}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    git("add", "--all", cwd=path)
    git("commit", "--quiet", "-m", "first", cwd=path)
    return path


def commit(repo: Path, name: str, text: str, message: str = "change") -> str:
    """Write ``name`` in ``repo`` and commit it; the new commit's id."""
    (repo / name).write_text(text)
    git("add", name, cwd=repo)
    git("commit", "--quiet", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo).strip()


# -- a git wrapper that traces every call and can hold one until released ----------------------
WRAPPER: Final = """#!/bin/sh
# Test wrapper around git: logs each call; holds calls whose argv contains $GITWRAP_HOLD
# until a line is written to (or the writer closes) the fifo $GITWRAP_DIR/gate.
printf '%s start %s\\n' "$$" "$*" >> "$GITWRAP_DIR/trace"
if [ -n "$GITWRAP_HOLD" ]; then
  case "$*" in
    *"$GITWRAP_HOLD"*) : > "$GITWRAP_DIR/held.$$"; read _line < "$GITWRAP_DIR/gate" ;;
  esac
fi
"$GITWRAP_GIT" "$@"
rc=$?
printf '%s end %s\\n' "$$" "$rc" >> "$GITWRAP_DIR/trace"
exit $rc
"""


class GitWrapper:
    """``program`` is a git that logs to ``trace`` and holds calls matching ``hold``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.program = directory / "git"
        self.program.write_text(WRAPPER)
        self.program.chmod(0o755)
        os.mkfifo(directory / "gate")
        (directory / "trace").touch()

    def env(self, base: dict[str, str], hold: str | None = None) -> dict[str, str]:
        env = dict(base, GITWRAP_DIR=str(self.dir), GITWRAP_GIT=GIT)
        if hold:
            env["GITWRAP_HOLD"] = hold
        return env

    def trace(self) -> list[str]:
        return (self.dir / "trace").read_text().splitlines()

    def calls(self) -> list[str]:
        """The argv of every call started, in order."""
        return [line.split(" start ", 1)[1] for line in self.trace() if " start " in line]

    def held(self) -> list[int]:
        """Pids of the calls being held now."""
        return [int(p.name.split(".", 1)[1]) for p in self.dir.glob("held.*")]

    def release(self) -> None:
        """Let every held call go on (opening and closing the fifo's write end ends their read)."""
        try:
            fd = os.open(self.dir / "gate", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nobody is reading: nothing held
                return
            raise
        with contextlib.suppress(BrokenPipeError):
            os.write(fd, b"go\n")
        os.close(fd)
        for held in self.dir.glob("held.*"):
            held.unlink()


# -- a smart-HTTP server ---------------------------------------------------------------------
class GitHTTPServer:
    """``git http-backend`` for the repositories under ``root``, at ``url(name)``.

    With ``token``, every request needs Basic auth ``x-access-token:<token>`` (else 401, as
    GitHub answers). ``stall_pack()`` makes the next pack response stop half-way until
    ``release()``; ``stalled`` is set once it has stopped.
    """

    def __init__(self, root: Path, *, token: str | None = None, user: str = "x-access-token") -> None:
        self.root = root
        self.token = token
        self.user = user
        self.authorizations: list[str | None] = []
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._stall_next = False
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="git-http", daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"http://{self.host}/{name}"

    def stall_pack(self) -> None:
        with self._lock:
            self._stall_next = True

    def release(self) -> None:
        self._release.set()

    def _take_stall(self) -> bool:
        with self._lock:
            stall, self._stall_next = self._stall_next, False
            return stall

    def __enter__(self) -> GitHTTPServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    owner: GitHTTPServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        server = self.owner
        auth = self.headers.get("Authorization")
        server.authorizations.append(auth)
        if server.token is not None:
            expected = "Basic " + base64.b64encode(f"{server.user}:{server.token}".encode()).decode()
            if auth != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        body = self._body()
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(server.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": self.command,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": server.user,
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(server.root),
        }
        for header, var in (
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ):
            if self.headers.get(header):
                env[var] = self.headers[header]
        done = subprocess.run([BACKEND], input=body, env=env, capture_output=True, timeout=60, check=False)
        raw = done.stdout
        cut = raw.find(b"\r\n\r\n")
        head, payload = (raw[:cut], raw[cut + 4 :]) if cut >= 0 else raw.split(b"\n\n", 1)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command == "POST" and _asks_for_a_pack(body, env) and server._take_stall():
            half = len(payload) // 2
            self.wfile.write(payload[:half])
            self.wfile.flush()
            server.stalled.set()
            server._release.wait(timeout=120)
            with contextlib.suppress(OSError):  # the client may be gone (killed) by now
                self.wfile.write(payload[half:])
            return
        self.wfile.write(payload)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


def _asks_for_a_pack(body: bytes, env: dict[str, str]) -> bool:
    """An upload-pack request for objects (protocol v2 ``command=fetch``, or v0 ``want``
    lines), not a protocol v2 ``ls-refs`` (which ``git ls-remote`` sends)."""
    if env.get("HTTP_CONTENT_ENCODING") == "gzip":
        body = gzip.decompress(body)
    return env["PATH_INFO"].endswith("git-upload-pack") and (b"command=fetch" in body or b"want " in body)


def age_tree(tree: Path, seconds: float) -> None:
    """Make a worktree look ``seconds`` old (prune spares worktrees made in the last minute)."""
    meta_file = tree / "workspace.json"
    meta = json.loads(meta_file.read_text())
    meta["created_at"] -= seconds
    meta_file.write_text(json.dumps(meta))
