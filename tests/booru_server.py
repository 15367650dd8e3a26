"""A local stand-in for safebooru and konachan, for the crawler's tests: one thread on 127.0.0.1.

It serves the real responses of ../shared/data/booru/ with their image URLs rewritten to point
at itself, paged by the `page` and `limit` parameters; Moebooru listing pages rendered from the
Moebooru posts in the shape of Moebooru's own template (app/helpers/post_helper.rb#print_preview,
no verbatim capture exists); and, for any other path, an illustration of
../shared/data/illustrations/ of the same file type. A test can replace a path's body
(`bodies`), script faults for its next requests (`script`), or have the connection dropped in
the middle of a file's body the next N times it is asked for (`drop_mid_body`). Faults include
answers that trickle in a byte at a time (`trickle`) and listing pages of any size
(`large_page`). `silent_host()` is a host that takes connections and never answers.
"""

import html
import json
import re
import socket
import struct
import sys
import threading
import time
import zlib
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

IMAGE_HOSTS = re.compile(r"https://(cdn\.donmai\.us|danbooru\.donmai\.us|konachan\.com)/")
MOEBOORU_RATINGS = {"s": "Safe", "q": "Questionable", "e": "Explicit"}
LISTINGS = ("/posts.json", "/post.json", "/posts", "/post")


class BooruServer:
    """`with BooruServer(data_dir) as server:` serves on `server.url` until the block ends."""

    def __init__(self, data_dir):
        data = Path(data_dir)
        self.httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.booru = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        booru = data / "booru"
        self.danbooru_posts = json.loads(self._rewrite((booru / "danbooru_posts.json").read_text()))
        self.moebooru_posts = json.loads(self._rewrite((booru / "moebooru_posts.json").read_text()))
        self.danbooru_html = self._rewrite((booru / "danbooru_post_list.html").read_text())
        illustrations = sorted((data / "illustrations").iterdir())
        self.images = {ext: [path.read_bytes() for path in illustrations if path.suffix == f".{ext}"]
                       for ext in ("jpg", "png")}
        self.bodies = {}  # path -> bytes served there instead of an illustration
        self.page_limit = None  # pages beyond it get 410, as Danbooru answers beyond page 1000
        self.log = []  # (time.monotonic(), path, query) of every request, in order
        self._scripts = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def _rewrite(self, text):
        return IMAGE_HOSTS.sub(lambda m: f"{self.url}/{m.group(1)}/", text)

    def danbooru_post(self, md5, name, rating="g", id=1):
        """A Danbooru post whose every rendition is served at /img/<name>."""
        url = f"{self.url}/img/{name}"
        return {"id": id, "md5": md5, "rating": rating, "tag_string": "1girl solo",
                "file_ext": name.rsplit(".", 1)[-1], "file_url": url, "large_file_url": url,
                "preview_file_url": url}

    def script(self, path, *faults):
        """The next requests of `path` get these faults, one each; later ones are served."""
        with self._lock:
            self._scripts.setdefault(path, []).extend(faults)

    def drop_mid_body(self, path, times):
        """The next `times` requests of `path` get half its body, then a reset connection."""
        self.script(path, *[dropped_mid_body] * times)

    def _next_fault(self, path):
        with self._lock:
            queue = self._scripts.get(path)
            return queue.pop(0) if queue else None

    def requests_of(self, path):
        return sum(1 for _, logged, _ in self.log if logged == path)

    def image_paths(self):
        return [path for _, path, _ in self.log if path not in LISTINGS]

    def body(self, path):
        if path in self.bodies:
            return self.bodies[path]
        ext = "png" if path.lower().endswith(".png") else "jpg"
        choices = self.images[ext]
        return choices[zlib.crc32(path.encode()) % len(choices)]


def moebooru_listing(posts):
    """A Moebooru /post page holding `posts`, as print_preview writes one."""
    items = []
    for post in posts:
        title = html.escape(f"Rating: {MOEBOORU_RATINGS.get(post['rating'], post['rating'])} "
                            f"Score: {post.get('score', 0)} Tags: {post.get('tags', '')} "
                            f"User: {post.get('author', '')}")
        large = post.get("jpeg_url") or post.get("file_url")
        size = "largeimg" if max(post.get("width", 0), post.get("height", 0)) > 1500 else "smallimg"
        directlink = (f'<a class="directlink {size}" href="{html.escape(large)}">'
                      '<span class="directlink-info"></span>'
                      f'<span class="directlink-res">{post.get("width")} x {post.get("height")}'
                      "</span></a>") if large else ""
        items.append(
            f'<li style="width: 160px;" id="p{post["id"]}" class=" creator-id-{post.get("creator_id")}">'
            '<div class="inner" style="width: 150px; height: 150px;">'
            f'<a class="thumb" href="/post/show/{post["id"]}">'
            f'<img src="{html.escape(post.get("preview_url", ""))}" alt="{title}" class="preview" '
            f'title="{title}" width="150" height="100"></a></div>{directlink}</li>')
    return ('<!DOCTYPE html><html><head><title>Konachan.net</title></head><body>'
            '<div id="post-list"><div class="content"><div>'
            f'<ul id="post-list-posts">{"".join(items)}</ul></div>'
            '<div id="paginator"></div></div></div></body></html>')


@contextmanager
def silent_host():
    """`with silent_host() as url:` a host on 127.0.0.1 that accepts connections (the kernel
    completes them into the listening queue) and never answers: nobody accepts or reads them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def status(code, headers=None):
    """A fault: answer `code` with these headers and a short text body."""
    def fault(handler, body):
        handler.reply(code, "text/plain", f"{code}\n".encode(), headers)
    return fault


def cut_mid_body(handler, body):
    """A fault: send half the body, chunked, then reset the connection."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    half = body[: len(body) // 2]
    handler.wfile.write(b"%x\r\n%s\r\n" % (len(half), half))
    handler.reset_connection()


def send_half(handler, body):
    """Announce the whole body's Content-Length, then send only its first half."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[: len(body) // 2])
    handler.wfile.flush()


def dropped_mid_body(handler, body):
    """A fault: announce the full Content-Length, send half the body, reset the connection."""
    send_half(handler, body)
    handler.reset_connection()


def stalled_mid_body(seconds):
    """A fault: announce the full Content-Length, send half the body, then nothing for
    `seconds` before closing."""
    def fault(handler, body):
        send_half(handler, body)
        time.sleep(seconds)
        handler.close_connection = True
    return fault


def short_body(handler, body):
    """A fault: announce the full Content-Length, send half, close the connection."""
    send_half(handler, body)
    handler.close_connection = True


def html_as_image(handler, body):
    """A fault: a 200 whose body is an HTML page (a login wall, a CDN error page)."""
    handler.reply(200, "image/jpeg", b"<!DOCTYPE html><html><body>Access denied</body></html>")


def without_length(handler, body):
    """A fault: the right body, chunked, so that no Content-Length warns of its size."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Transfer-Encoding", "chunked")
    handler.end_headers()
    for start in range(0, len(body), 65536):
        piece = body[start:start + 65536]
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
    handler.wfile.write(b"0\r\n\r\n")


def slowly(seconds):
    """A fault: the right body, 4 KiB at a time, over about `seconds`."""
    def fault(handler, body):
        handler.send_response(200)
        handler.send_header("Content-Type", "image/jpeg")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        pieces = range(0, len(body), 4096)
        try:
            for start in pieces:
                handler.wfile.write(body[start:start + 4096])
                time.sleep(seconds / len(pieces))
        except OSError:
            pass  # the client went away, which is what the test wants
        handler.close_connection = True
    return fault


def trickle(every, body=None, head=False, most=20):
    """A fault: an answer sent one byte every `every` seconds, so that no read waits long, for at
    most `most` seconds or until the client goes away: its status line and headers too when
    `head`, else only its body, whose whole length the headers announce. `body` stands in for the
    path's own (a listing's, which faults are not given)."""
    def fault(handler, served):
        data = served if body is None else body
        start = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % len(data)
        slow = start + data if head else data
        end = time.monotonic() + most
        try:
            if not head:
                handler.wfile.write(start)
            for i in range(len(slow)):
                if time.monotonic() > end:
                    break
                handler.wfile.write(slow[i:i + 1])
                time.sleep(every)
        except OSError:
            pass  # the client went away, which is what the test wants
        handler.close_connection = True
    return fault


def large_page(size, announced):
    """A fault: a listing page of `size` bytes, an empty JSON list padded with spaces, its length
    announced by Content-Length or, sent chunked, not; written a piece at a time, so that the
    server holds none of it whole."""
    def fault(handler, served):
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header(*(("Content-Length", str(size)) if announced else ("Transfer-Encoding", "chunked")))
        handler.end_headers()

        def send(piece):
            handler.wfile.write(piece if announced else b"%x\r\n%s\r\n" % (len(piece), piece))

        spaces = b" " * 65536
        try:
            send(b"[")
            for start in range(1, size - 1, len(spaces)):
                send(spaces[:min(len(spaces), size - 1 - start)])
            send(b"]")
            if not announced:
                handler.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the client stopped reading
        handler.close_connection = True
    return fault


class _HTTPServer(ThreadingHTTPServer):
    # The crawler keeps connections alive; closing must not wait for their idle threads.
    block_on_close = False

    def handle_error(self, request, client_address):
        # A client that closes a kept-alive connection with an answer unread (a 404 it streams
        # and drops) resets it; that is no error of the server's, and no traceback for the log.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, like the real sites
    timeout = 10

    def log_message(self, *args):
        pass

    def reply(self, code, content_type, body, headers=None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def reset_connection(self):
        # SO_LINGER 0: close() sends a RST, as a dropped connection looks to the client.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def do_GET(self):
        booru = self.server.booru
        url = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        booru.log.append((time.monotonic(), url.path, query))
        page, limit = int(query.get("page", 1)), int(query.get("limit", 20))
        listing = url.path in LISTINGS
        body = None if listing else booru.body(url.path)
        fault = booru._next_fault(url.path)
        if fault is not None:
            fault(self, body)
        elif listing and booru.page_limit and page > booru.page_limit:
            self.reply(410, "application/json", json.dumps({
                "success": False, "error": "PaginationExtension::PaginationError",
                "message": f"You cannot go beyond page {booru.page_limit}."}).encode())
        elif listing:
            self.listing(url.path, page, limit)
        else:
            self.reply(200, "image/png" if url.path.endswith(".png") else "image/jpeg", body)

    def listing(self, path, page, limit):
        booru = self.server.booru
        window = slice((page - 1) * limit, page * limit)
        if path == "/posts.json":
            self.reply(200, "application/json", json.dumps(booru.danbooru_posts[window]).encode())
        elif path == "/post.json":
            self.reply(200, "application/json", json.dumps(booru.moebooru_posts[window]).encode())
        elif path == "/post":
            self.reply(200, "text/html", moebooru_listing(booru.moebooru_posts[window]).encode())
        else:  # the captured Danbooru page holds its 20 posts as page 1, whatever the limit
            text = booru.danbooru_html if page == 1 else "<html><body></body></html>"
            self.reply(200, "text/html", text.encode())
