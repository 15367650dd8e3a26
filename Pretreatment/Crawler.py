"""Download anime illustrations from safebooru (Danbooru) and konachan (Moebooru) for face cropping.

    python Pretreatment/Crawler.py --site both --tags "1girl solo" --pages 1-50 --out DataSet/raw

Polite: requests to one site start at least --delay seconds apart, shared by every download
thread, with a descriptive User-Agent; connection errors, 429 and 5xx are retried with
exponential back-off that honours Retry-After (urllib3's Retry on the session's adapter), and so
is a download whose body breaks off, which urllib3 no longer retries once the headers are in.
Resumable: files are named <out>/<site>/<md5>.<ext> and listed in <out>/manifest.jsonl, so the
same command run again downloads only what is new. Safe: a download streams into a temporary
file beside its final name (Files.atomic_write) and is renamed only once its length, its size
limit and its decoding as an image check out, so no file under a final name is ever partial,
Ctrl-C included.

The JSON APIs are the default (Danbooru /posts.json, Moebooru /post.json); --api html parses
the listing pages with BeautifulSoup instead.
"""

import argparse
import json
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable, Optional
from urllib.parse import urljoin, urlparse

import requests
from bs4 import BeautifulSoup
from PIL import Image
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from urllib3.util.retry import Retry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # Files.py, also when run as a script
from Files import atomic_write, read_json_lines  # noqa: E402

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
TIMEOUT = (10, 60)  # seconds to connect, seconds of silence while reading
CHUNK_BYTES = 1 << 16


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
                tags=str(item.get(site.tags_field) or ""),
                # Some instances answer with site-relative or protocol-relative URLs.
                url=urljoin(page_url, url) if url else None)


def make_session(retries, backoff, workers):
    """One session per site: keeps its connections alive, and its adapter does all retrying."""
    retry = Retry(total=retries, backoff_factor=backoff, status_forcelist=RETRY_STATUSES,
                  allowed_methods=frozenset({"GET"}), respect_retry_after_header=True,
                  raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_maxsize=max(10, workers + 1))
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
        with Image.open(path) as image:
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


def download(session, limiter, url, dest, max_bytes, stop, retries, backoff):
    """Fetch url into dest; return None if kept, else the reason not. A body that breaks off is
    fetched again, up to `retries` times, backoff * 2**(n-1) seconds after the n-th break: the
    same request usually succeeds, but urllib3's Retry gives up once the headers are in."""
    for attempt in range(retries + 1):
        if attempt and stop.wait(backoff * 2 ** (attempt - 1)):
            return "interrupted"
        reason = fetch_once(session, limiter, url, dest, max_bytes, stop)
        if reason != "incomplete":
            return reason
    return reason


def fetch_once(session, limiter, url, dest, max_bytes, stop):
    """One request for url into dest, through a temporary file; None if kept, else the reason."""
    limiter.wait()
    if stop.is_set():
        return "interrupted"
    try:
        with session.get(url, stream=True, timeout=TIMEOUT) as response:
            if response.status_code != 200:
                return f"http {response.status_code}"
            length = response.headers.get("Content-Length", "")
            expected = int(length) if length.isdigit() else None
            if expected is not None and expected > max_bytes:
                return "too large"
            # atomic_write removes the temporary file whatever stops the body.
            atomic_write(dest, lambda temp: save_body(response, temp, expected, max_bytes, stop))
        return None
    except NotKept as reason:
        return str(reason)
    except requests.Timeout:
        return "timeout"
    except requests.ConnectionError:
        return "connection"
    except requests.RequestException as error:
        return type(error).__name__


def save_body(response, temp, expected, max_bytes, stop):
    """Stream the body into temp; raise NotKept unless all of it came and it is an image."""
    size = 0
    with open(temp, "wb") as file:
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                if stop.is_set():
                    raise NotKept("interrupted")
                size += len(chunk)
                if size > max_bytes:
                    raise NotKept("too large")
                file.write(chunk)
        # The body stopped before its end: a dropped connection (requests calls a reset or a
        # read timeout in the body a ConnectionError), a chunk cut short, a short body.
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError):
            raise NotKept("incomplete") from None
    # urllib3 2 already raises on a short body; this also covers urllib3 1.
    if expected is not None and response.raw.tell() != expected:
        raise NotKept("incomplete")
    if not decodes_as_image(temp):
        raise NotKept("not an image")


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
        self.pool = None

    def run(self):
        names = list(SITES) if self.args.site == "both" else [self.args.site]
        with ThreadPoolExecutor(self.args.workers) as self.pool:
            try:
                for name in names:
                    self.crawl_site(SITES[name])
            except KeyboardInterrupt:
                self.tally.interrupted = True
            finally:
                # After Ctrl-C or an error, running downloads see the flag between two chunks
                # and delete their temporary file, and queued ones are cancelled; after a normal
                # end there is nothing left to stop.
                self.stop.set()
                self.pool.shutdown(wait=True, cancel_futures=True)
        return self.tally

    def crawl_site(self, site):
        args = self.args
        folder = self.out / site.name
        folder.mkdir(exist_ok=True)
        # Left by a process that was killed outright (.part by versions before Files.atomic_write).
        for stale in [*folder.glob(".*.tmp"), *folder.glob(".*.part")]:
            stale.unlink()
        have = self.manifest.md5s(site.name) | {
            path.stem for path in folder.iterdir() if path.suffix[1:] in ALLOWED_EXTENSIONS}
        session = make_session(args.retries, args.backoff, args.workers)
        limiter = RateLimiter(args.delay, self.stop)
        limit = min(args.limit or site.max_limit, site.max_limit)
        if args.limit and args.limit > site.max_limit:
            tqdm.write(f"{site.name}: --limit {args.limit} is over its maximum, using {limit}.")
        first, last = args.pages
        with tqdm(desc=site.name, unit="post", total=0, dynamic_ncols=True) as bar:
            for page in range(first, last + 1):
                if site.max_page and page > site.max_page:
                    tqdm.write(f"{site.name}: stopped at page {site.max_page}, the deepest it "
                               "serves; narrow --tags to reach older posts.")
                    break
                answer = self.read_page(site, session, limiter, page, limit)
                if answer is None:
                    break
                items, page_url = answer
                self.download_posts(site, session, limiter, folder, have, items, page_url, bar)
                if len(items) < limit:
                    tqdm.write(f"{site.name}: page {page} had {len(items)} of {limit} posts, "
                               "the last page.")
                    break
            else:
                tqdm.write(f"{site.name}: stopped after page {last}, the end of --pages.")

    def read_page(self, site, session, limiter, page, limit):
        """The page's posts as dicts with the JSON field names and the page's URL, or None when
        the crawl of this site stops here."""
        args = self.args
        base = (args.base_url or site.base_url).rstrip("/")
        path = site.json_path if args.api == "json" else site.html_path
        limiter.wait()
        try:
            response = session.get(base + path, timeout=TIMEOUT,
                                   params={"tags": args.tags, "page": page, "limit": limit})
            if response.status_code == PAGE_LIMIT_STATUS:
                tqdm.write(f"{site.name}: the site answered page {page} with its page limit; "
                           "narrow --tags to reach older posts.")
                return None
            response.raise_for_status()
            if args.api == "html":
                items = site.html_posts(BeautifulSoup(response.text, "html.parser"))
            else:
                items = response.json()
                if not isinstance(items, list):  # Danbooru reports errors as an object
                    raise ValueError(f"expected a list of posts, got {str(items)[:200]}")
        except (requests.RequestException, ValueError) as error:
            tqdm.write(f"{site.name}: could not read page {page} of {base + path} ({error}); "
                       "check the connection and --base-url, then rerun to resume.")
            self.tally.site_errors += 1
            return None
        self.tally.pages += 1
        return [item for item in items if isinstance(item, dict)], response.url

    def download_posts(self, site, session, limiter, folder, have, items, page_url, bar):
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
            futures.append(self.pool.submit(self.fetch, site, session, limiter, folder, post, bar))
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

    def fetch(self, site, session, limiter, folder, post, bar):
        """Runs on a worker thread; records its own outcome so that Ctrl-C loses none."""
        name = f"{post.md5}.{post.extension}"
        reason = download(session, limiter, post.url, folder / name, self.args.max_bytes,
                          self.stop, self.args.retries, self.args.backoff)
        with self.lock:
            if reason is None:
                self.tally.downloaded += 1
                self.manifest.add({"site": site.name, "id": post.id, "md5": post.md5,
                                   "rating": post.rating, "tags": post.tags, "url": post.url,
                                   "file": f"{site.name}/{name}"})
            else:
                self.tally.failed[reason] += 1
        bar.update()


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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", choices=["safebooru", "konachan", "both"], default="both",
                        help="which site to crawl (default both, one after the other)")
    parser.add_argument("--tags", default="1girl solo",
                        help='search tags, space separated (default "1girl solo"; Danbooru '
                             "allows 2 without an account)")
    parser.add_argument("--pages", type=page_range, default=(1, 50),
                        help="pages to read, FIRST-LAST or N for 1-N (default 1-50)")
    parser.add_argument("--limit", type=int, default=None,
                        help="posts per page (default and maximum: 200 safebooru, 100 konachan)")
    parser.add_argument("--size", choices=["preview", "sample", "original"], default="sample",
                        help="which rendition to download (default sample, the site's reduced JPEG)")
    parser.add_argument("--out", default="DataSet/raw",
                        help="output folder; files go to OUT/<site>/<md5>.<ext> (default DataSet/raw)")
    parser.add_argument("--workers", type=int, default=4,
                        help="download threads (default 4)")
    parser.add_argument("--delay", type=float, default=1.0,
                        help="seconds between the starts of two requests to one site, pages and "
                             "images alike, across all threads (default 1.0)")
    parser.add_argument("--rating", choices=["safe", "any"], default="safe",
                        help="keep only posts rated safe (g or s), or any rating (default safe)")
    parser.add_argument("--api", choices=["json", "html"], default="json",
                        help="read the JSON API or parse the HTML listing pages (default json)")
    parser.add_argument("--base-url", default=None,
                        help="another host running the same software as --site: a mirror or a "
                             "local test server (default the site itself)")
    parser.add_argument("--max-bytes", type=int, default=20_000_000,
                        help="largest file kept, in bytes (default 20000000, 20 MB)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries of one request on connection errors, 429 and 5xx, and of "
                             "a download whose body breaks off (default 5)")
    parser.add_argument("--backoff", type=float, default=1.0,
                        help="back-off factor in seconds: retry n waits backoff * 2**(n-1), or "
                             "what Retry-After says (default 1.0)")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1.")
    if args.workers < 1:
        parser.error("--workers must be at least 1.")
    if args.delay < 0 or args.backoff < 0 or args.retries < 0:
        parser.error("--delay, --backoff and --retries cannot be negative.")
    if args.max_bytes < 1:
        parser.error("--max-bytes must be at least 1.")
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    try:
        tally = Crawl(args).run()
    except OSError as error:
        print(f"Could not write under {args.out} ({error}); free some space or choose another "
              "--out, then rerun to resume.", file=sys.stderr)
        return 1
    print(format_summary(tally, time.monotonic() - started))
    if tally.interrupted:
        print("Interrupted: no partial file was kept; rerun the same command to resume.")
        return 130
    return 1 if tally.site_errors else 0


if __name__ == "__main__":
    sys.exit(main())
