"""Download anime illustrations from safebooru (Danbooru) and konachan (Moebooru) for face cropping.

    python Pretreatment/Crawler.py --site both --tags "1girl solo" --pages 1-50 --out DataSet/raw

Polite: requests to one site start at least --delay seconds apart, shared by every download
thread, with a descriptive User-Agent; connection errors, 429 and 5xx are retried with
exponential back-off that honours Retry-After (urllib3's Retry on the session's adapter), and so
is a download whose body breaks off, which urllib3 no longer retries once the headers are in.
Never silent: a request still unanswered after NOTICE_SECONDS, and every retry, is a line on the
terminal, and a site that never answers is given up after a bound --help states. --timeout bounds
each try's whole answer, body included, not each read (Deadlines), so that a site sending a byte a
second cannot keep the crawler, or Ctrl-C, waiting; a listing page is read up to MAX_PAGE_BYTES.
Resumable: files are named <out>/<site>/<md5>.<ext> and listed in <out>/manifest.jsonl, so the
same command run again downloads only what is new. Safe: a download streams into a temporary
file beside its final name (Files.atomic_write) and is renamed only once its length, its size
limit and its decoding as an image check out, so no file under a final name is ever partial,
and none is left behind by Ctrl-C or SIGTERM.

The JSON APIs are the default (Danbooru /posts.json, Moebooru /post.json); --api html parses
the listing pages with BeautifulSoup instead.
"""

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Optional
from urllib.parse import urljoin, urlparse

import requests
from bs4 import BeautifulSoup
from PIL import Image
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3 import poolmanager as urllib3_poolmanager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Files.py, also when run as a script
from Files import (  # noqa: E402
    atomic_write,
    open_image,
    os_error_sentence,
    read_json_lines,
    warnings_as_sentences,
    within,
)

# Danbooru's CDN rejects the default client User-Agents, and a site admin should be able to
# tell what is crawling them.
USER_AGENT = "AvatarGenerator-crawler/1.0 (anime face dataset for a DCGAN; python-requests)"
# Stills only: the cropper and the reader read these; gif, mp4, webm and zip (ugoira) are skipped,
# and nothing a server sends (.exe, .html, ...) can choose the kind of file written.
ALLOWED_EXTENSIONS = {"jpg", "jpeg", "png", "webp"}
IMAGE_FORMATS = {"JPEG", "MPO", "PNG", "WEBP"}  # what Pillow calls the same stills
MD5 = re.compile(r"[0-9a-f]{32}")
# Danbooru rates g(eneral) s(ensitive) q e, Moebooru s(afe) q e; safebooru and konachan.net
# show g and s, which is what --rating safe keeps.
SAFE_RATINGS = {"g", "s"}
RETRY_STATUSES = (429, 500, 502, 503, 504)
PAGE_LIMIT_STATUS = 410  # Danbooru's answer to a page beyond its limit (1000)
CHUNK_BYTES = 1 << 16
# Defaults of --timeout, --retries and --backoff, named once: --help computes its bound from them.
TIMEOUT = 30.0
RETRIES = 5
BACKOFF = 1.0
# The ranges of the network flags, so that a typo (--delay 1e300, --retries 100000000) is refused
# at once instead of waiting longer than a clock can count or retrying for ever.
MAX_WORKERS = 64  # past a few, threads only queue at --delay; urllib3 sets a slot aside for each
MAX_DELAY = 600.0
MIN_TIMEOUT, MAX_TIMEOUT = 0.1, 600.0
MAX_RETRIES = 20
MAX_BACKOFF = Retry.DEFAULT_BACKOFF_MAX  # urllib3 never waits longer than this between tries
# A request still unanswered this long is said on the terminal, long before --timeout ends it: a
# site that has stopped answering must not look like a crawl that is merely slow to start.
NOTICE_SECONDS = 5
# Seconds between two looks of Deadlines: how late past --timeout, or after Ctrl-C, a try is cut.
DEADLINE_TICK = 0.1
# The largest listing page read. A page of 200 posts is about 0.4 MB of JSON or 0.8 MB of HTML;
# past this the answer is no listing (a wrong --base-url, a hostile host), and reading it whole
# would take memory without end.
MAX_PAGE_BYTES = 10_000_000


@dataclass(frozen=True)
class Site:
    """One image board: where its API lives and which fields carry what."""
    name: str
    base_url: str
    json_path: str
    html_path: str
    max_limit: int  # posts per page the API allows
    max_page: Optional[int]
    tags_field: str
    url_fields: dict  # --size -> fields holding that image, the first present wins
    html_posts: Callable  # BeautifulSoup page -> list of post dicts with the JSON field names


@dataclass(frozen=True)
class Post:
    id: str
    md5: str
    rating: str
    tags: str
    url: Optional[str]

    @property
    def extension(self):
        return PurePosixPath(urlparse(self.url).path).suffix.lower().lstrip(".")


@dataclass
class Tally:
    pages: int = 0
    posts: int = 0
    downloaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    site_errors: int = 0
    interrupted: bool = False


def danbooru_html_posts(soup):
    """Danbooru's listing carries each post's fields as data-* attributes of its <article>."""
    posts = []
    for article in soup.select("article.post-preview"):
        item = {name[5:].replace("-", "_"): value for name, value in article.attrs.items()
                if name.startswith("data-")}
        item["tag_string"] = item.pop("tags", "")
        thumb = article.find("img")
        if thumb is not None and thumb.get("src"):
            item.setdefault("preview_file_url", thumb["src"])
            item.setdefault("md5", md5_in_url(thumb["src"]))
        posts.append(item)
    return posts


def moebooru_html_posts(soup):
    """Moebooru's listing links a thumbnail and one large image (the JPEG version when there is
    one), which stands in for both sample and original; rating and tags are in the thumbnail's
    title, "Rating: Safe Score: 3 Tags: a b User: x"."""
    posts = []
    for li in soup.select("ul#post-list-posts > li"):
        thumb = li.select_one("img.preview")
        link = li.select_one("a.directlink")
        title = thumb.get("title", "") if thumb is not None else ""
        rating = re.search(r"Rating: (\w)", title)
        tags = re.search(r"Tags: (.*?) User:", title)
        large = link.get("href") if link is not None else None
        preview = thumb.get("src") if thumb is not None else None
        posts.append({
            "id": li.get("id", "").lstrip("p"),
            "md5": md5_in_url(large or "") or md5_in_url(preview or ""),
            "rating": rating.group(1).lower() if rating else "",
            "tags": tags.group(1) if tags else "",
            "preview_url": preview, "sample_url": large, "file_url": large,
        })
    return posts


def md5_in_url(url):
    found = re.search(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])", urlparse(url).path)
    return found.group(0) if found else ""


SITES = {
    "safebooru": Site(
        name="safebooru", base_url="https://safebooru.donmai.us",
        json_path="/posts.json", html_path="/posts", max_limit=200, max_page=1000,
        tags_field="tag_string",
        url_fields={"preview": ("preview_file_url",), "sample": ("large_file_url", "file_url"),
                    "original": ("file_url",)},
        html_posts=danbooru_html_posts),
    "konachan": Site(
        name="konachan", base_url="https://konachan.net",
        json_path="/post.json", html_path="/post", max_limit=100, max_page=None,
        tags_field="tags",
        url_fields={"preview": ("preview_url",), "sample": ("sample_url", "jpeg_url", "file_url"),
                    "original": ("file_url",)},
        html_posts=moebooru_html_posts),
}


def to_post(site, item, size, page_url):
    url = next((item[name] for name in site.url_fields[size] if item.get(name)), None)
    return Post(id=str(item.get("id") or ""), md5=str(item.get("md5") or "").lower(),
                rating=str(item.get("rating") or "").lower(),
                tags=str(item.get(site.tags_field) or ""), url=absolute_url(page_url, url))


def absolute_url(page_url, url):
    """A post's URL made absolute, as some instances answer with site-relative or protocol-relative
    ones; None, which skips the post as one with no URL, for a value that is no URL: a number, or
    text that urllib cannot take apart ("http://[", an unclosed IPv6 address)."""
    if not isinstance(url, str):
        return None
    try:
        return urljoin(page_url, url)
    except ValueError:
        return None


def say(line):
    """A line above the progress bars, at once, also when stdout is a pipe or a file."""
    tqdm.write(line)
    sys.stdout.flush()


def host_of(url):
    return urlparse(url).netloc


def pool_host(pool):
    """A urllib3 connection pool's host as host_of() writes it: the port only when not the default."""
    default = {"http": 80, "https": 443}.get(pool.scheme)
    return pool.host if pool.port in (None, default) else f"{pool.host}:{pool.port}"


def give_up_seconds(timeout, retries, backoff):
    """How long one request to a site that never answers lasts at most: retries + 1 tries of
    `timeout` seconds each, and urllib3's back-off between them (none before the first retry, then
    backoff * 2**(n-1) before retry n, at most Retry.DEFAULT_BACKOFF_MAX)."""
    waits = sum(min(Retry.DEFAULT_BACKOFF_MAX, backoff * 2 ** (n - 1)) for n in range(2, retries + 1))
    return (retries + 1) * timeout + waits


class Interrupted(Exception):
    """A request given up because the crawl is stopping (Ctrl-C, SIGTERM)."""


class ReportedRetry(Retry):
    """urllib3's Retry, which calls `client.say_retry(retry, response, error, pool)` before each
    retry, so that none of them is silent, and waits between tries on the client's stop event, so
    that Ctrl-C need not wait out a back-off or a Retry-After; once it is set, no try follows."""
    client = None  # the SiteClient

    def new(self, **kwargs):
        retry = super().new(**kwargs)  # urllib3 builds each next state with new()
        retry.client = self.client
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)  # raises when done
        if self.client is not None:
            if self.client.stop.is_set():
                raise Interrupted()
            self.client.say_retry(retry, response, error, _pool)
        return retry

    def sleep(self, response=None):
        wait = self.get_retry_after(response) if self.respect_retry_after_header and response else None
        wait = self.get_backoff_time() if wait is None else wait
        if self.client is None:
            time.sleep(wait)
        elif self.client.stop.wait(wait):
            raise Interrupted()


@dataclass
class Try:
    """One try of a request, as Deadlines watches it."""
    connection: Optional[HTTPConnection]  # None once the request is over
    deadline: float  # time.monotonic() by which all of its answer must have come
    sent: bool  # its request has gone out: another request() on the connection is another try
    late: bool = False  # cut at its deadline


class Deadlines:
    """Holds each try of a request to --timeout for all of its answer, body included, and ends
    every try at once when `stop` is set (Ctrl-C, SIGTERM). A socket's timeout bounds each read,
    not the answer: a site sending a byte a second would keep a try, and Ctrl-C, waiting for good.
    So a thread looks every DEADLINE_TICK and shuts the socket of each try past its deadline,
    which ends the read in progress. The connections of pool_classes() say when a try begins."""

    def __init__(self, timeout, stop):
        self.timeout, self.stop = timeout, stop
        self.lock = threading.Lock()
        self.tries = {}  # thread id -> its latest Try
        self.ended = threading.Event()
        threading.Thread(target=self.watch, name="deadlines", daemon=True).start()

    def request_starts(self):
        """A request begins in this thread: what late() said of the last one no longer holds."""
        with self.lock:
            self.tries.pop(threading.get_ident(), None)

    def try_starts(self, connection, sending):
        """A try begins on connection in this thread: at its connect() (which comes first on
        HTTPS), or at request() on a connection kept alive."""
        thread = threading.get_ident()
        with self.lock:
            latest = self.tries.get(thread)
            if latest is not None and latest.connection is connection and not (sending and latest.sent):
                latest.sent |= sending  # the same try: its connect(), then its request()
                return
            for other, watched in list(self.tries.items()):
                if watched.connection is connection:  # handed on by a thread whose request is over
                    del self.tries[other]
            self.tries[thread] = Try(connection, time.monotonic() + self.timeout, sending)

    def request_ends(self):
        """This thread's request is over, body and all: its connection is not cut any more, but
        late() still says how its last try ended."""
        with self.lock:
            latest = self.tries.get(threading.get_ident())
            if latest is not None:
                latest.connection = None

    def late(self):
        """Whether this thread's latest try was cut at its deadline."""
        with self.lock:
            latest = self.tries.get(threading.get_ident())
            return latest is not None and latest.late

    def watch(self):
        while not self.ended.wait(DEADLINE_TICK):
            now = time.monotonic()
            with self.lock:
                for watched in self.tries.values():
                    if watched.connection is not None and (self.stop.is_set() or now >= watched.deadline):
                        watched.late |= not self.stop.is_set()
                        cut(watched.connection)

    def close(self):
        self.ended.set()

    def pool_classes(self):
        """urllib3's connection pools by scheme, whose connections call try_starts()."""
        deadlines = self

        def watched(connection_class):
            class Watched(connection_class):
                def connect(self):
                    deadlines.try_starts(self, sending=False)
                    super().connect()

                def request(self, *args, **kwargs):
                    deadlines.try_starts(self, sending=True)
                    super().request(*args, **kwargs)
            return Watched

        return {"http": type("HTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": watched(HTTPConnection)}),
                "https": type("HTTPSConnectionPool", (HTTPSConnectionPool,),
                              {"ConnectionCls": watched(HTTPSConnection)})}


def cut(connection):
    """Shut a connection's socket from another thread: a read blocked on it returns at once. With
    socket.socket's own shutdown: SSLSocket's would first drop the TLS state under the reader."""
    sock = connection.sock
    if isinstance(sock, socket.socket):
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass  # closed already


class WatchedAdapter(HTTPAdapter):
    """requests' adapter, whose connections (direct, or through an HTTP proxy) tell `deadlines`
    when each try begins."""

    def __init__(self, deadlines, **kwargs):
        self.deadlines = deadlines  # before HTTPAdapter's __init__, which calls init_poolmanager
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = self.deadlines.pool_classes()

    def proxy_manager_for(self, proxy, **proxy_kwargs):
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if manager.pool_classes_by_scheme is urllib3_poolmanager.pool_classes_by_scheme:  # not SOCKS's
            manager.pool_classes_by_scheme = self.deadlines.pool_classes()
        return manager


def make_session(client, deadlines):
    """One session per site: keeps its connections alive, and its adapter does all retrying,
    saying each retry through the client, and tells deadlines when each try begins."""
    retry = ReportedRetry(total=client.tries - 1, backoff_factor=client.backoff,
                          status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET"}),
                          respect_retry_after_header=True, raise_on_status=False)
    retry.client = client
    adapter = WatchedAdapter(deadlines, max_retries=retry, pool_maxsize=max(10, client.workers + 1))
    session = requests.Session()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


class RateLimiter:
    """Starts requests to one site at least `delay` seconds apart, whichever thread asks."""

    def __init__(self, delay, stop):
        self.delay, self.stop = delay, stop
        self.lock = threading.Lock()
        self.next_start = 0.0

    def wait(self):
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.delay
        self.stop.wait(start - now)  # returns at once on Ctrl-C


def inner_error(error):
    """The error a requests exception stands for: requests wraps urllib3's MaxRetryError, which
    holds the last try's error (a read timeout, a refused connection) as `reason`."""
    while True:
        if isinstance(error, MaxRetryError) and error.reason is not None:
            error = error.reason
        elif (isinstance(error, requests.RequestException) and error.args
              and isinstance(error.args[0], Exception)):
            error = error.args[0]
        else:
            return error


def os_words(error):
    """The operating system's words for an error ("Connection refused"), found in its causes."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.strerror:
            return error.strerror
        error = error.__cause__ or error.__context__ or next(
            (arg for arg in error.args if isinstance(arg, BaseException)), None)
    return ""


def no_answer(error, host, timeout, late=False):
    """(the summary's reason, a phrase in the crawler's words) for a request that got no answer:
    `error` is requests' ConnectionError or Timeout, or the urllib3 error of one try, and `late`
    whether Deadlines cut that try at --timeout (the error is then the cut's). urllib3's own text
    ("HTTPConnectionPool(...): Max retries exceeded ...") is never shown."""
    error = inner_error(error)
    # Before the timeout test: urllib3 2 makes NewConnectionError a ConnectTimeoutError too.
    if isinstance(error, NewConnectionError):
        cause = os_words(error)
        if isinstance(error.__cause__ or error.__context__, socket.gaierror):
            return "connection", f"the host name of {host} is unknown ({cause})"
        return "connection", f"{host} did not take the connection ({cause or 'no reason given'})"
    if late or isinstance(error, (Urllib3Timeout, requests.Timeout, socket.timeout)):
        return "timeout", f"{host} sent no answer within {timeout:g} s"
    cause = os_words(error)
    return "connection", f"the connection to {host} broke off" + (f" ({cause})" if cause else "")


class SiteClient:
    """The crawler's line to one site: a session whose adapter does the retrying, the pace of its
    requests, the deadline of each try, and the lines that say so when the site keeps the crawler
    waiting."""

    def __init__(self, name, args, stop, deadlines):
        self.name, self.timeout, self.backoff = name, args.timeout, args.backoff
        self.tries, self.workers, self.stop = args.retries + 1, args.workers, stop
        self.give_up = give_up_seconds(args.timeout, args.retries, args.backoff)
        self.limiter = RateLimiter(args.delay, stop)
        self.deadlines = deadlines
        self.session = make_session(self, deadlines)

    @contextmanager
    def answer(self, url, **kwargs):
        """The answer to a GET of url, its body streamed, for the block. Each try has --timeout
        for all of its answer, the reading of the body in the block included (Deadlines); a line
        says so if no answer has come after NOTICE_SECONDS."""
        notice = threading.Timer(NOTICE_SECONDS, self.say_waiting, args=(url,))
        notice.daemon = True
        notice.start()
        self.deadlines.request_starts()
        try:
            with self.session.get(url, timeout=self.timeout, stream=True, **kwargs) as response:
                notice.cancel()
                yield response
        finally:
            notice.cancel()
            self.deadlines.request_ends()

    def late(self):
        """Whether the last try of this thread's request was cut at --timeout."""
        return self.deadlines.late()

    def why_cut(self):
        """The summary's reason when this thread's request was cut short: "interrupted" by Ctrl-C
        or SIGTERM, "too slow" at --timeout; None when it was not cut."""
        return "interrupted" if self.stop.is_set() else "too slow" if self.late() else None

    def say_waiting(self, url):
        say(f"{self.name}: no answer from {host_of(url)} yet after {NOTICE_SECONDS} s; waiting up "
            f"to {self.timeout:g} s a try (--timeout), {self.tries} tries, giving up after "
            f"{self.give_up:.0f} s.")

    def say_retry(self, retry, response, error, pool):
        """Before each retry urllib3 makes: what failed, which try it was, and the wait."""
        host = pool_host(pool) if pool is not None else self.name
        if response is not None:
            what = f"{host} answered {response.status}"
            wait = retry.get_retry_after(response) or retry.get_backoff_time()
        else:
            what = no_answer(error, host, self.timeout, self.late())[1]
            wait = retry.get_backoff_time()
        when = f"in {wait:g} s" if wait > 0 else "now"
        say(f"{self.name}: try {len(retry.history)} of {self.tries}: {what}; trying again {when}.")


class Manifest:
    """manifest.jsonl: one JSON line per file kept, the provenance and the state for resuming."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.kept = set()  # (site, md5)
        # A line cut short by a killed process is passed over; its file is found on disk.
        self.kept.update((record["site"], record["md5"]) for record in read_json_lines(path)
                         if "site" in record and "md5" in record)

    def md5s(self, site):
        return {md5 for kept_site, md5 in self.kept if kept_site == site}

    def add(self, record):
        with self.lock:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
            self.kept.add((record["site"], record["md5"]))


def decodes_as_image(path):
    try:
        with open_image(path) as image:
            if image.format not in IMAGE_FORMATS:
                return False
            # A JPEG decodes at a quarter of its size, much faster and as thorough a check.
            image.draft("RGB", (image.width // 4, image.height // 4))
            image.load()
        return True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


class NotKept(Exception):
    """A download that is not kept; the message is the reason the summary counts."""


# A download whose body broke off, or was cut at --timeout, is fetched again: urllib3 retries only
# until the headers are in.
BROKEN_OFF = {"incomplete": "broke off", "too slow": "was not whole within {timeout:g} s (--timeout)"}


def download(client, url, dest, max_bytes):
    """Fetch url into dest; return (None, the URL it came from after redirects) if kept, else
    (the reason not, None). A body that breaks off, or is still coming at --timeout, is fetched
    again, up to --retries times, backoff * 2**(n-1) seconds after the n-th time: the same
    request usually succeeds, but urllib3's Retry gives up once the headers are in."""
    for attempt in range(1, client.tries + 1):
        reason, final_url = fetch_once(client, url, dest, max_bytes)
        if reason not in BROKEN_OFF or attempt == client.tries:
            return reason, final_url
        wait = client.backoff * 2 ** (attempt - 1)
        what = BROKEN_OFF[reason].format(timeout=client.timeout)
        say(f"{client.name}: try {attempt} of {client.tries}: the download of {url} {what}; "
            f"trying again in {wait:g} s.")
        if client.stop.wait(wait):
            return "interrupted", None


def fetch_once(client, url, dest, max_bytes):
    """One request for url into dest, through a temporary file: (None, the final URL) if kept,
    else (the reason, None)."""
    client.limiter.wait()
    if client.stop.is_set():
        return "interrupted", None
    try:
        # Redirects are followed, to other hosts too: the listing itself names whatever host it
        # likes for a file (its CDN), so a redirect gives a server no power it lacks, and
        # refusing one would lose the files of a site whose CDN redirects. response.url is where
        # the file came from, which the manifest records.
        with client.answer(url) as response:
            if response.status_code != 200:
                return f"http {response.status_code}", None
            expected = announced_length(response)
            if expected is not None and expected > max_bytes:
                return "too large", None
            # atomic_write removes the temporary file whatever stops the body.
            atomic_write(dest, lambda temp: save_body(response, temp, max_bytes, client))
        return None, response.url
    except NotKept as reason:
        return str(reason), None
    except Interrupted:
        return "interrupted", None
    except (requests.ConnectionError, requests.Timeout) as error:
        if client.stop.is_set():
            return "interrupted", None
        return no_answer(error, host_of(url), client.timeout, client.late())[0], None
    except requests.RequestException as error:
        return type(error).__name__, None


def announced_length(response):
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def save_body(response, temp, max_bytes, client):
    """Stream the body into temp; raise NotKept unless all of it came and it is an image."""
    with open(temp, "wb") as file:
        read_body(response, max_bytes, file.write, client)
    if not decodes_as_image(temp):
        raise NotKept("not an image")


def read_body(response, most, write, client):
    """Pass the body of the answer to write() piece by piece. Raises NotKept: "interrupted" on
    Ctrl-C, "too large" past `most` bytes, "too slow" when Deadlines cut the try at --timeout,
    "incomplete" when it stopped short of its end otherwise (a dropped connection, fewer bytes
    than its Content-Length). The try's time ends with the body: checking it is no part of it."""
    size = 0
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            if client.stop.is_set():
                raise NotKept("interrupted")
            size += len(chunk)
            if size > most:
                raise NotKept("too large")
            write(chunk)
        whole = is_whole(response, client)
    # requests calls a reset, a read timeout or a cut in the body a ConnectionError or a
    # ChunkedEncodingError.
    except requests.RequestException:
        whole = False
    finally:
        client.deadlines.request_ends()
    if not whole:
        raise NotKept(client.why_cut() or "incomplete")


def is_whole(response, client):
    """Whether all of a body read to its end came: as many bytes as its Content-Length (urllib3 2
    already raises on fewer; this also covers urllib3 1), or, for a body without one, its last
    chunk (urllib3 raises without it); a body that ends with the connection cannot tell its end
    from a cut, which Deadlines reports."""
    expected = announced_length(response)
    if expected is not None:
        return response.raw.tell() == expected
    return response.raw.chunked or not client.late()


class Crawl:
    """One run of the crawler over the chosen sites; `run()` returns the Tally."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest(self.out / "manifest.jsonl")
        self.tally = Tally()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.deadlines = None
        self.pool = None

    def run(self):
        names = list(SITES) if self.args.site == "both" else [self.args.site]
        self.deadlines = Deadlines(self.args.timeout, self.stop)
        try:
            with ThreadPoolExecutor(self.args.workers) as self.pool:
                try:
                    for name in names:
                        self.crawl_site(SITES[name])
                except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (main)
                    self.tally.interrupted = True
                finally:
                    # After Ctrl-C or an error, Deadlines cuts every connection, so running
                    # downloads end within DEADLINE_TICK, however slow their site, and delete their
                    # temporary file; queued ones are cancelled. After a normal end there is
                    # nothing left to stop.
                    self.stop.set()
                    self.finish_downloads()
        finally:
            self.deadlines.close()
        return self.tally

    def finish_downloads(self):
        """Wait for the download threads, which end within a moment once self.stop is set. A
        second Ctrl-C while they do asks for what is already happening: it must not leave them
        writing, nor end in a traceback."""
        while True:
            try:
                self.pool.shutdown(wait=True, cancel_futures=True)
                return
            except KeyboardInterrupt:
                self.tally.interrupted = True

    def crawl_site(self, site):
        args = self.args
        folder = self.out / site.name
        folder.mkdir(exist_ok=True)
        # Left by a process that was killed outright (.part by versions before Files.atomic_write).
        for stale in [*folder.glob(".*.tmp"), *folder.glob(".*.part")]:
            stale.unlink()
        have = self.manifest.md5s(site.name) | {
            path.stem for path in folder.iterdir() if path.suffix[1:] in ALLOWED_EXTENSIONS}
        client = SiteClient(site.name, args, self.stop, self.deadlines)
        limit = min(args.limit or site.max_limit, site.max_limit)
        if args.limit and args.limit > site.max_limit:
            say(f"{site.name}: --limit {args.limit} is over its maximum, using {limit}.")
        first, last = args.pages
        with tqdm(desc=site.name, unit="post", total=0, dynamic_ncols=True) as bar:
            for page in range(first, last + 1):
                if site.max_page and page > site.max_page:
                    say(f"{site.name}: stopped at page {site.max_page}, the deepest it serves; "
                        "narrow --tags to reach older posts.")
                    break
                answer = self.read_page(site, client, page, limit)
                if answer is None:
                    break
                items, page_url = answer
                self.download_posts(site, client, folder, have, items, page_url, bar)
                if len(items) < limit:
                    say(f"{site.name}: page {page} had {len(items)} of {limit} posts, the last page.")
                    break
            else:
                say(f"{site.name}: stopped after page {last}, the end of --pages.")

    def read_page(self, site, client, page, limit):
        """The page's posts as dicts with the JSON field names and the page's URL, or None when
        the crawl of this site stops here."""
        args = self.args
        url = (args.base_url or site.base_url).rstrip("/") + (
            site.json_path if args.api == "json" else site.html_path)
        client.limiter.wait()
        started = time.monotonic()
        try:
            with client.answer(url, params={"tags": args.tags, "page": page, "limit": limit}) as response:
                if response.status_code == PAGE_LIMIT_STATUS:
                    say(f"{site.name}: the site answered page {page} with its page limit; "
                        "narrow --tags to reach older posts.")
                    return None
                response.raise_for_status()
                body = page_body(response, client)
            items = posts_of(site, body, response, args.api)
        except (requests.RequestException, ValueError, NotKept) as error:
            problem = page_problem(error, client, url, time.monotonic() - started)
            say(f"{site.name}: could not read page {page} of {url}: {problem}")
            self.tally.site_errors += 1
            return None
        self.tally.pages += 1
        return [item for item in items if isinstance(item, dict)], response.url

    def download_posts(self, site, client, folder, have, items, page_url, bar):
        """Download the page's new posts on the worker threads, waiting for all of them."""
        bar.total += len(items)
        bar.refresh()
        futures = []
        for item in items:
            post = to_post(site, item, self.args.size, page_url)
            self.tally.posts += 1
            reason = self.skip_reason(post, have)
            if reason:
                self.tally.skipped[reason] += 1
                bar.update()
                continue
            have.add(post.md5)  # the same post can turn up on two pages while the site changes
            futures.append(self.pool.submit(self.fetch, site, client, folder, post, bar))
        for future in as_completed(futures):
            future.result()  # raises what went wrong beyond one download (a full disk)

    def skip_reason(self, post, have):
        if self.args.rating == "safe" and post.rating not in SAFE_RATINGS:
            return "rating"
        if not post.url or urlparse(post.url).scheme not in ("http", "https"):
            return "no URL"
        if not MD5.fullmatch(post.md5):
            return "bad md5"
        if post.extension not in ALLOWED_EXTENSIONS:
            return "file type"
        if post.md5 in have:
            return "existing"
        return None

    def fetch(self, site, client, folder, post, bar):
        """Runs on a worker thread; records its own outcome so that Ctrl-C loses none."""
        name = f"{post.md5}.{post.extension}"
        reason, final_url = download(client, post.url, folder / name, self.args.max_bytes)
        with self.lock:
            if reason is None:
                self.tally.downloaded += 1
                self.manifest.add({"site": site.name, "id": post.id, "md5": post.md5,
                                   "rating": post.rating, "tags": post.tags, "url": final_url,
                                   "file": f"{site.name}/{name}"})
            else:
                self.tally.failed[reason] += 1
        bar.update()


def page_body(response, client):
    """The bytes of a listing page, read as a download is (read_body), but into memory, and at most
    MAX_PAGE_BYTES of them: a larger page is refused before reading when its Content-Length says
    so, else once that much has come."""
    expected = announced_length(response)
    if expected is not None and expected > MAX_PAGE_BYTES:
        raise NotKept("too large")
    body = bytearray()
    read_body(response, MAX_PAGE_BYTES, body.extend, client)
    return bytes(body)


def posts_of(site, body, response, api):
    """The posts of a listing page's body, as dicts with the JSON field names; ValueError, in
    words that follow "the answer of <host>", when it is no list of posts. HTML is decoded as
    requests' response.text would: the charset its headers give, else as BeautifulSoup finds."""
    if api == "html":
        return site.html_posts(BeautifulSoup(body, "html.parser", from_encoding=response.encoding))
    try:
        items = json.loads(body)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(items, list):  # Danbooru reports errors as an object, whose text helps
        raise ValueError(f"is not a list of posts but {str(items)[:200]}")
    return items


def page_problem(error, client, url, seconds):
    """What went wrong reading a listing page and what to try, in the crawler's words."""
    host = host_of(url)
    if isinstance(error, NotKept):
        return page_not_read(str(error), host, client.timeout)
    if isinstance(error, requests.HTTPError):
        answer = error.response
        return (f"{host} answered {answer.status_code} {answer.reason}; check --base-url and "
                "--tags, or rerun later to resume.")
    if isinstance(error, ValueError):
        return f"the answer of {host} {error}; check --base-url and --api, then rerun to resume."
    if not isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return f"the request failed ({type(error).__name__}); check --base-url, then rerun to resume."
    reason, words = no_answer(error, host, client.timeout, client.late())
    tried = f"{words}, {client.tries} {'try' if client.tries == 1 else 'tries'} in {seconds:.0f} s"
    if reason == "timeout":
        return (f"{tried}; check that the site is up, or give a slow one longer with --timeout, "
                "then rerun to resume.")
    return f"{tried}; check the connection and --base-url, then rerun to resume."


def page_not_read(reason, host, timeout):
    """What to say of a listing page whose body read_body did not keep, for its reason."""
    if reason == "too large":
        return (f"the answer of {host} is larger than {MAX_PAGE_BYTES:,} bytes, which no listing "
                "page is, so it was not read; check --base-url and --api, then rerun to resume.")
    if reason == "too slow":
        return (f"{host} did not send all of the page within {timeout:g} s; check that the site is "
                "up, or give a slow one longer with --timeout, then rerun to resume.")
    return f"the connection to {host} broke off in the middle of the page; rerun to resume."


def format_summary(tally, seconds):
    skipped = {"existing": 0, "rating": 0, "no URL": 0}
    skipped.update(tally.skipped)
    failed = ", ".join(f"{reason} {count}" for reason, count in sorted(tally.failed.items()))
    return "\n".join([
        f"Pages read:  {tally.pages}",
        f"Posts seen:  {tally.posts}",
        f"Downloaded:  {tally.downloaded}",
        f"Skipped:     {sum(skipped.values())} ("
        + ", ".join(f"{reason} {count}" for reason, count in skipped.items()) + ")",
        f"Failed:      {sum(tally.failed.values())}" + (f" ({failed})" if failed else ""),
        f"Time:        {seconds:.1f} s",
    ])


def page_range(text):
    found = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIRST-LAST or N, e.g. 1-50")
    first, last = (int(found.group(1)), int(found.group(2))) if found.group(2) \
        else (1, int(found.group(1)))
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"{text!r} must count up from page 1 or later")
    return first, last


def site_address(text):
    """An argparse type: an http:// or https:// address, else refused in one sentence."""
    try:
        address = urlparse(text)
    except ValueError:  # text that urllib cannot take apart: "http://[", an unclosed IPv6
        address = None
    if address is None or address.scheme not in ("http", "https") or not address.netloc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http:// or https:// address")
    return text


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=(
        f"A site that does not answer gets a line on the terminal after {NOTICE_SECONDS} s and "
        "at every retry, and is given up after at most (--retries + 1) x --timeout seconds plus "
        f"the back-off: {give_up_seconds(TIMEOUT, RETRIES, BACKOFF):.0f} s with the defaults. "
        f"A listing page over {MAX_PAGE_BYTES:,} bytes is refused. "
        "Redirects are followed, to other hosts too, and the manifest records the URL a file "
        "came from after them. Ctrl-C and SIGTERM stop it within a second, with no partial file "
        "left."))
    parser.add_argument("--site", choices=["safebooru", "konachan", "both"], default="both",
                        help="which site to crawl (default both, one after the other)")
    parser.add_argument("--tags", default="1girl solo",
                        help='search tags, space separated (default "1girl solo"; Danbooru '
                             "allows 2 without an account)")
    parser.add_argument("--pages", type=page_range, default=(1, 50),
                        help="pages to read, FIRST-LAST or N for 1-N (default 1-50)")
    parser.add_argument("--limit", type=within(int, 1), default=None,
                        help="posts per page (default and maximum: 200 safebooru, 100 konachan)")
    parser.add_argument("--size", choices=["preview", "sample", "original"], default="sample",
                        help="which rendition to download (default sample, the site's reduced JPEG)")
    parser.add_argument("--out", default="DataSet/raw",
                        help="output folder; files go to OUT/<site>/<md5>.<ext> (default DataSet/raw)")
    parser.add_argument("--rating", choices=["safe", "any"], default="safe",
                        help="keep only posts rated safe (g or s), or any rating (default safe)")
    parser.add_argument("--api", choices=["json", "html"], default="json",
                        help="read the JSON API or parse the HTML listing pages (default json)")
    add_network_flags(parser)
    return parser


def add_network_flags(parser):
    """The flags of how the crawler talks to a site: threads, pace, waits, retries, host."""
    parser.add_argument("--workers", type=within(int, 1, MAX_WORKERS), default=4,
                        help=f"download threads, 1 to {MAX_WORKERS} (default 4)")
    parser.add_argument("--delay", type=within(float, 0, MAX_DELAY), default=1.0,
                        help="seconds between the starts of two requests to one site, pages and "
                             f"images alike, across all threads, 0 to {MAX_DELAY:g} (default 1.0)")
    parser.add_argument("--timeout", type=within(float, MIN_TIMEOUT, MAX_TIMEOUT), default=TIMEOUT,
                        help="seconds one try of a request may take, from connecting to the last "
                             "byte of its answer, before it is given up and retried, "
                             f"{MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} (default {TIMEOUT:g})")
    parser.add_argument("--base-url", type=site_address, default=None,
                        help="another host running the same software as --site: a mirror or a "
                             "local test server (default the site itself)")
    parser.add_argument("--max-bytes", type=within(int, 1), default=20_000_000,
                        help="largest file kept, in bytes (default 20000000, 20 MB); listing pages "
                             f"have their own limit, {MAX_PAGE_BYTES:,} bytes")
    parser.add_argument("--retries", type=within(int, 0, MAX_RETRIES), default=RETRIES,
                        help="retries of one request on connection errors, timeouts, 429 and 5xx, "
                             f"and of a download whose body breaks off, 0 to {MAX_RETRIES} "
                             f"(default {RETRIES})")
    parser.add_argument("--backoff", type=within(float, 0, MAX_BACKOFF), default=BACKOFF,
                        help=f"back-off factor in seconds, 0 to {MAX_BACKOFF:g}: retry n waits "
                             "backoff * 2**(n-1) (urllib3 makes a request's first retry at once), "
                             f"or what Retry-After says (default {BACKOFF:g})")


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    warnings_as_sentences()  # Pillow's warning about a huge image, say, without a source line
    # SIGTERM (kill, a service manager, a container stopping) stops the crawl as Ctrl-C does, so
    # that no temporary file outlives it.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return crawl_and_report(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def crawl_and_report(args):
    """Run the crawl, print its summary, and return the exit status."""
    started = time.monotonic()
    try:
        tally = Crawl(args).run()
    except OSError as error:  # a full disk, say: the crawl's files are whole, and a rerun resumes it
        sentence = os_error_sentence(error)
        if sentence is None:
            raise  # not the machine's doing: a bug, so a traceback
        print(f"error: {sentence}", file=sys.stderr)
        return 2
    print(format_summary(tally, time.monotonic() - started))
    if tally.interrupted:
        print("Interrupted: no partial file was kept; rerun the same command to resume.")
        return 130
    failed = sum(tally.failed.values())
    if failed and not tally.downloaded:
        every = f"Every one of the {failed} downloads" if failed > 1 else "The one download"
        print(f"{every} failed, so nothing was added to {args.out}: the summary above counts "
              "why; check --base-url and --size, then rerun to retry.", file=sys.stderr)
        return 1
    return 1 if tally.site_errors else 0


if __name__ == "__main__":
    sys.exit(main())
