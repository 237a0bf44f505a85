"""`infoflow serve`: the built site on localhost, and nothing else.

The handler answers only for regular files inside the site: no dotfiles (the site marker, a
stray .env), nothing reached through a symlink that points out of the site, no directory
listings, and 400 for a path with a NUL byte.
"""
from __future__ import annotations

import errno
import functools
import http.server
import os
import urllib.parse
from pathlib import Path


class SiteHandler(http.server.SimpleHTTPRequestHandler):
    def send_head(self):
        path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        if "\x00" in path:
            self.send_error(400, "Bad path")
            return None
        if any(part.startswith(".") for part in path.split("/") if part):
            self.send_error(404, "Not found")
            return None
        local = os.path.realpath(self.translate_path(self.path))
        root = os.path.realpath(self.directory)
        if local != root and not local.startswith(root + os.sep):
            self.send_error(404, "Not found")
            return None
        # What a symlink inside the site resolves to is held to the same rule: no dotfiles.
        if any(part.startswith(".") for part in Path(os.path.relpath(local, root)).parts if part != "."):
            self.send_error(404, "Not found")
            return None
        return super().send_head()

    def list_directory(self, path):
        self.send_error(404, "Not found")
        return None

    def log_message(self, format, *args):     # quiet: one line per request is noise here
        pass


class ServeError(Exception):
    """The server could not start; the message says what to do."""


def make_server(site: Path, port: int, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    handler = functools.partial(SiteHandler, directory=str(site))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ServeError(f"port {port} is in use (another server?); pass another one, e.g. "
                             f"--port {port + 1}.") from e
        raise ServeError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
