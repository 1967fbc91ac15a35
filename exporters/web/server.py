"""``zoo serve-web``: a page that generates with a web export in the visitor's own browser.

    zoo export gpt2 --format web -o out/gpt2-web
    zoo serve-web out/gpt2-web                       # http://127.0.0.1:8000/
    zoo serve-web out/gpt2-web --library node_modules   # transformers.js from a local npm install

The server answers GET and HEAD for exactly these paths, read-only, and 404 for any other:

- ``/`` (the page, :file:`page/index.html`) and ``/zoo-web.json`` (what the page needs: the
  model's name, its precisions, where transformers.js comes from);
- ``/model/...``: the files of the export folder. A path is resolved (symlinks included) and
  must land on a regular file inside the folder: ``..``, an absolute path, or a symlink
  leading out gets a 404, and a directory is never listed;
- ``/lib/...``, with ``--library``: transformers.js's ``dist`` files and onnxruntime-web's
  WebAssembly build from a local npm install. Without it the page imports transformers.js
  from jsDelivr (pinned to :data:`TRANSFORMERS_JS_VERSION`, the version zoo's tests run).

Every answer is sent cross-origin isolated (``Cross-Origin-Opener-Policy: same-origin``,
``Cross-Origin-Embedder-Policy: require-corp``): without it a browser gives WebAssembly no
shared memory, so ONNX Runtime Web runs on one thread. The server binds 127.0.0.1 unless
told otherwise (``--host``).
"""

from __future__ import annotations

import json
import mimetypes
import shutil
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from urllib.parse import unquote, urlsplit

from zoo.errors import ZooError
from zoo.exporters.web.folder import check_folder

TRANSFORMERS_JS_VERSION = "4.3.2"
CDN_LIBRARY = f"https://cdn.jsdelivr.net/npm/@huggingface/transformers@{TRANSFORMERS_JS_VERSION}/dist/transformers.min.js"
WASM_BUILD = "ort-wasm-simd-threaded.asyncify"  # the build transformers.js loads in browsers
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
         ".onnx": "application/octet-stream", ".onnx_data": "application/octet-stream", ".html": "text/html"}
ISOLATION = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
             "Cross-Origin-Resource-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}


def library_files(library: str | Path) -> dict[str, Path]:
    """The files ``/lib/`` serves from ``library``: a ``node_modules`` folder (or the folder
    holding one) with ``@huggingface/transformers`` and ``onnxruntime-web`` installed."""
    root = Path(library)
    modules = root / "node_modules" if (root / "node_modules").is_dir() else root
    dist = modules / "@huggingface" / "transformers" / "dist"
    ort = modules / "onnxruntime-web" / "dist"
    files = {"transformers.js": dist / "transformers.js"}
    files.update({f"{WASM_BUILD}{ext}": ort / f"{WASM_BUILD}{ext}" for ext in (".mjs", ".wasm")})
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ZooError(f"--library {library}: {missing[0]} is missing; install transformers.js there with "
                       f"`npm install --prefix {library} --ignore-scripts @huggingface/transformers@{TRANSFORMERS_JS_VERSION}`")
    return files


def page_info(folder: Path, variants: list[str], library: dict | None) -> dict:
    """``/zoo-web.json``: what the page loads, and from where."""
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    default = (config.get("transformers.js_config") or {}).get("dtype")
    return {
        "model": manifest.get("model", folder.name),
        "variants": variants,
        "dtype": default if default in variants else variants[0],
        "tokenizer": (folder / "tokenizer.json").is_file(),
        "task": "translation" if config.get("is_encoder_decoder") else "text-generation",
        "library": "./lib/transformers.js" if library else CDN_LIBRARY,
        **({"wasm": {"mjs": f"lib/{WASM_BUILD}.mjs", "wasm": f"lib/{WASM_BUILD}.wasm"}} if library else {}),
    }


def inside(root: Path, relative: str) -> Path | None:
    """The regular file ``relative`` names under ``root``, or None when it leaves ``root``
    (``..``, an absolute path, a symlink pointing out) or is not a file."""
    if not relative or "\x00" in relative or relative.startswith("/") or "\\" in relative:
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    base = root.resolve()
    target = (base / relative).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        return None
    return target


class PageHandler(BaseHTTPRequestHandler):
    """GET and HEAD for the page, its description, the export's files and the library."""

    server_version = "zoo-serve-web"
    sys_version = ""
    page: Path
    folder: Path
    info: bytes
    library: dict[str, Path] | None
    quiet = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self.answer(body=False)

    def answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        if path in ("/", "/index.html"):
            return self.send(self.page.read_bytes(), "text/html; charset=utf-8", body)
        if path == "/zoo-web.json":
            return self.send(self.info, "application/json", body)
        if path.startswith("/model/"):
            target = inside(self.folder, path.removeprefix("/model/"))
            if target is not None:
                return self.send_file(target, body)
        elif path.startswith("/lib/") and self.library:
            target = self.library.get(path.removeprefix("/lib/"))
            if target is not None:
                return self.send_file(target, body)
        self.send_error(HTTPStatus.NOT_FOUND)

    def send_error(self, code, message=None, explain=None) -> None:
        self.send(f"{code} {HTTPStatus(code).phrase}\n".encode(), "text/plain; charset=utf-8", self.command != "HEAD",
                  status=code)

    def send(self, data: bytes, content_type: str, body: bool, status: int = HTTPStatus.OK) -> None:
        self.send_response(status)
        self.headers_for(content_type, len(data))
        if body:
            self.wfile.write(data)

    def send_file(self, path: Path, body: bool) -> None:
        with path.open("rb") as handle:
            size = path.stat().st_size
            self.send_response(HTTPStatus.OK)
            self.headers_for(TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                             size)
            if body:
                shutil.copyfileobj(handle, self.wfile, 1 << 20)

    def headers_for(self, content_type: str, length: int) -> None:
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-cache")
        for name, value in ISOLATION.items():
            self.send_header(name, value)
        self.end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (http.server's signature)
        if not self.quiet:
            super().log_message(format, *args)


class PageServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A browser that closes a connection mid-download is not an error worth a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def make_server(folder: str | Path, host: str = "127.0.0.1", port: int = 8000, library: str | Path | None = None,
                quiet: bool = False) -> ThreadingHTTPServer:
    """A server for the web export in ``folder`` (checked first: one-line errors), not yet started;
    ``port`` 0 takes a free one (``server.server_address``)."""
    folder = Path(folder)
    variants = check_folder(folder, need_tokenizer=False)
    files = library_files(library) if library is not None else None
    page = Path(str(resources.files("zoo.exporters.web") / "page" / "index.html"))
    handler = type("Handler", (PageHandler,), {
        "page": page, "folder": folder.resolve(), "library": files, "quiet": quiet,
        "info": json.dumps(page_info(folder, variants, files)).encode(),
    })
    try:
        server = PageServer((host, port), handler)
    except OSError as exc:
        raise ZooError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port or --host") from None
    return server


def serve_in_background(server: ThreadingHTTPServer) -> threading.Thread:
    """Run ``server`` on a daemon thread (tests, notebooks); ``server.shutdown()`` stops it."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return thread
