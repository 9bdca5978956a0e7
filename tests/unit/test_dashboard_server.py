"""The dashboard's socket and what it says about the store (bridge/dashboard/server.py)."""

from __future__ import annotations

import shutil
import socket

import pytest

from bridge.dashboard.server import browser_page, listen, store_kind


def test_listening_socket_is_loopback_tcp() -> None:
    """The socket listens on 127.0.0.1 only, on a port the kernel picked, and says IPPROTO_TCP
    so that asyncio sets TCP_NODELAY on each connection (else: 40 ms per keep-alive answer)."""
    sock = listen(None)
    try:
        host, port = sock.getsockname()
        assert host == "127.0.0.1" and port > 0
        assert sock.proto == socket.IPPROTO_TCP
        assert not sock.get_inheritable()  # agents of an in-process supervisor never hold it
    finally:
        sock.close()


def test_a_taken_port_is_an_error() -> None:
    """--port of a port in use fails (OSError: the CLI's one-line error), leaking no socket."""
    first = listen(None)
    try:
        with pytest.raises(OSError, match="in use"):
            listen(first.getsockname()[1])
    finally:
        first.close()


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("sqlite:///home/me/jobs.sqlite3", "sqlite"),
        ("postgresql://me:s3cret@db.example/jobs", "postgres"),
        ("postgres://me:s3cret@db.example/jobs", "postgres"),
        ("supabase", "supabase"),
    ],
)
def test_page_learns_the_store_kind_never_its_url(url: str, kind: str) -> None:
    """Only the kind of store reaches the page: a URL may carry a password."""
    assert store_kind(url) == kind


def test_browser_is_given_a_private_file_not_the_token() -> None:
    """--open hands the browser a 0600 file (in a 0700 directory) that redirects to the URL:
    the token never appears on a command line other users can read."""
    url = "http://127.0.0.1:8123/?token=s3cret&x=<1>"
    page = browser_page(url)
    try:
        assert "s3cret" not in page.as_uri()
        assert page.stat().st_mode & 0o777 == 0o600 and page.parent.stat().st_mode & 0o777 == 0o700
        text = page.read_text()
        assert 'content="0; url=http://127.0.0.1:8123/?token=s3cret&amp;x=&lt;1&gt;"' in text
    finally:
        shutil.rmtree(page.parent)
