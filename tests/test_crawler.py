"""Pretreatment/Crawler.py against a local stand-in for both sites (tests/booru_server.py).

Nothing here reaches the internet: the server serves the real API and HTML captures of
../shared/data/booru/ with their image URLs pointing back at itself, through --base-url.
"""
import errno
import json
import queue
import signal
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from booru_server import (
    BooruServer,
    cut_mid_body,
    dropped_mid_body,
    html_as_image,
    large_page,
    short_body,
    silent_host,
    slowly,
    stalled_mid_body,
    status,
    trickle,
    without_length,
)
from conftest import SHARED_DATA, run_script, start_script
from Pretreatment import Crawler

BOORU = SHARED_DATA / "booru"
GOOD_MD5, BAD_MD5, OTHER_MD5 = "a" * 32, "b" * 32, "c" * 32
URLLIB3_WORDS = ("HTTPConnectionPool", "Max retries exceeded", "Read timed out", "urllib3")


@pytest.fixture
def server():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: the booru captures and illustrations the local "
                    "server serves only exist beside the project's own checkout")
    with BooruServer(SHARED_DATA) as booru:
        yield booru


def crawl(server, out, *flags):
    """Crawl in-process, quickly: no delay between requests and a short back-off."""
    args = Crawler.parse_args(["--base-url", server.url, "--out", str(out), "--delay", "0",
                               "--backoff", "0.01", "--workers", "2", *flags])
    return Crawler.Crawl(args).run()


def kept_files(out):
    """Every file under out, relative, manifest included."""
    return sorted(path.relative_to(out).as_posix() for path in Path(out).rglob("*")
                  if path.is_file())


def manifest(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def assert_clean(out):
    """No temporary file anywhere; every image kept decodes and is in the manifest."""
    files = kept_files(out)
    assert not [name for name in files if name.endswith((".part", ".tmp"))]
    listed = {record["file"] for record in manifest(out)} if (out / "manifest.jsonl").exists() else set()
    images = {name for name in files if name != "manifest.jsonl"}
    assert images == listed
    for name in images:
        with Image.open(out / name) as image:
            image.load()


def fixture_posts(name):
    return json.loads((BOORU / name).read_text())


def use_posts(server, *posts):
    server.danbooru_posts = list(posts)


def test_safebooru_json_keeps_the_safe_posts_under_their_md5(server, tmp_path):
    posts = fixture_posts("danbooru_posts.json")
    safe = [post for post in posts if post["rating"] in ("g", "s")]
    tally = crawl(server, tmp_path, "--site", "safebooru")
    assert (tally.pages, tally.posts, tally.downloaded) == (1, 10, 7)
    assert tally.skipped == {"rating": 3} and not tally.failed
    # sample size: the large_file_url, a JPEG even for PNG originals
    assert kept_files(tmp_path) == sorted(
        ["manifest.jsonl"] + [f"safebooru/{post['md5']}.jpg" for post in safe])
    record = next(r for r in manifest(tmp_path) if r["md5"] == safe[0]["md5"])
    assert record == {"site": "safebooru", "id": str(safe[0]["id"]), "md5": safe[0]["md5"],
                      "rating": safe[0]["rating"], "tags": safe[0]["tag_string"],
                      "url": safe[0]["large_file_url"].replace("https://", server.url + "/"),
                      "file": f"safebooru/{safe[0]['md5']}.jpg"}
    assert_clean(tmp_path)


def test_original_size_takes_the_extension_of_the_original(server, tmp_path):
    posts = fixture_posts("danbooru_posts.json")
    tally = crawl(server, tmp_path, "--site", "safebooru", "--size", "original", "--rating", "any")
    assert tally.downloaded == 10
    assert kept_files(tmp_path) == sorted(
        ["manifest.jsonl"] + [f"safebooru/{post['md5']}.{post['file_ext']}" for post in posts])
    assert_clean(tmp_path)


def test_konachan_json_takes_the_extension_from_the_url(server, tmp_path):
    posts = fixture_posts("moebooru_posts.json")  # Moebooru sends no file_ext
    tally = crawl(server, tmp_path, "--site", "konachan")
    assert (tally.pages, tally.posts, tally.downloaded) == (1, 10, 10)
    assert kept_files(tmp_path) == sorted(
        ["manifest.jsonl"] + [f"konachan/{post['md5']}.jpg" for post in posts])
    assert_clean(tmp_path)


def test_html_listings_of_both_sites(server, tmp_path):
    tally = crawl(server, tmp_path, "--site", "both", "--api", "html")
    assert (tally.pages, tally.posts, tally.downloaded) == (2, 30, 30)
    assert not tally.skipped and not tally.failed
    files = kept_files(tmp_path)
    # Danbooru's data-large-file-url is the PNG itself where there is no sample.
    assert "safebooru/228d766b9b6986d8f555243b4add0be4.png" in files
    assert "safebooru/12a54c9a24868a6c717759f1dfef5864.jpg" in files
    assert sum(name.startswith("safebooru/") for name in files) == 20
    moebooru = fixture_posts("moebooru_posts.json")
    assert {f"konachan/{post['md5']}.jpg" for post in moebooru} <= set(files)
    record = next(r for r in manifest(tmp_path) if r["md5"] == moebooru[0]["md5"])
    assert record["rating"] == "s" and record["tags"] == moebooru[0]["tags"]
    assert_clean(tmp_path)


def test_a_second_identical_crawl_downloads_nothing(server, tmp_path):
    first = crawl(server, tmp_path, "--site", "both")
    images_fetched = len(server.image_paths())
    second = crawl(server, tmp_path, "--site", "both")
    assert first.downloaded == 17
    assert second.downloaded == 0 and second.skipped == {"existing": 17, "rating": 3}
    assert len(server.image_paths()) == images_fetched
    assert len(manifest(tmp_path)) == 17


def test_paging_stops_at_the_short_page(server, tmp_path, capsys):
    tally = crawl(server, tmp_path, "--site", "konachan", "--limit", "4")
    pages = [query["page"] for _, path, query in server.log if path == "/post.json"]
    assert pages == ["1", "2", "3"] and tally.pages == 3 and tally.downloaded == 10
    assert "page 3 had 2 of 4 posts, the last page" in capsys.readouterr().out


def test_paging_stops_at_the_end_of_pages(server, tmp_path, capsys):
    tally = crawl(server, tmp_path, "--site", "konachan", "--limit", "3", "--pages", "2-3")
    pages = [query["page"] for _, path, query in server.log if path == "/post.json"]
    assert pages == ["2", "3"] and tally.posts == 6
    assert "stopped after page 3, the end of --pages" in capsys.readouterr().out


def test_the_sites_page_limit_stops_the_crawl_with_a_message(server, tmp_path, capsys):
    server.page_limit = 1
    tally = crawl(server, tmp_path, "--site", "safebooru", "--limit", "4")
    assert tally.pages == 1 and tally.site_errors == 0
    assert "answered page 2 with its page limit" in capsys.readouterr().out


def test_a_limit_over_the_sites_maximum_is_lowered_to_it(server, tmp_path):
    crawl(server, tmp_path, "--site", "konachan", "--limit", "500")
    assert [query["limit"] for _, path, query in server.log if path == "/post.json"] == ["100"]


def test_requests_to_one_site_start_delay_apart_across_threads(server, tmp_path):
    args = Crawler.parse_args(["--base-url", server.url, "--out", str(tmp_path), "--site",
                               "konachan", "--delay", "0.1", "--workers", "4"])
    began = time.monotonic()
    Crawler.Crawl(args).run()
    arrivals = sorted(when for when, _, _ in server.log)
    assert len(arrivals) == 11  # one page, ten images
    # The limiter lets the i-th request go no sooner than i delays after the crawl began, and it
    # reaches the server later still: a busy machine delays arrivals, never brings one forward.
    assert all(arrival >= began + i * 0.1 - 0.001 for i, arrival in enumerate(arrivals))


def test_429_with_retry_after_is_retried_after_that_wait(server, tmp_path, capsys):
    server.script("/posts.json", status(429, {"Retry-After": "1"}))
    started = time.monotonic()
    tally = crawl(server, tmp_path, "--site", "safebooru")
    assert time.monotonic() - started >= 1.0
    assert server.requests_of("/posts.json") == 2
    assert tally.pages == 1 and tally.downloaded == 7 and not tally.failed
    assert f"safebooru: try 1 of 6: {server.url[7:]} answered 429; trying again in 1 s." in (
        capsys.readouterr().out)
    assert_clean(tmp_path)


def test_two_500s_then_success_is_a_download(server, tmp_path):
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg"),
              server.danbooru_post(BAD_MD5, "flaky.jpg"))
    server.script("/img/flaky.jpg", status(500), status(500))
    tally = crawl(server, tmp_path, "--site", "safebooru")
    assert server.requests_of("/img/flaky.jpg") == 3
    assert tally.downloaded == 2 and not tally.failed
    assert kept_files(tmp_path) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg",
                                    f"safebooru/{BAD_MD5}.jpg"]
    assert_clean(tmp_path)


def test_5xx_beyond_the_retries_fails_that_download(server, tmp_path):
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg"),
              server.danbooru_post(BAD_MD5, "down.jpg"))
    server.script("/img/down.jpg", status(503), status(503), status(503))
    tally = crawl(server, tmp_path, "--site", "safebooru", "--retries", "2")
    assert tally.downloaded == 1 and tally.failed == {"http 503": 1}
    assert kept_files(tmp_path) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg"]
    assert_clean(tmp_path)


@pytest.mark.parametrize("fault, reason, tries", [
    (cut_mid_body, "incomplete", 2),
    (short_body, "incomplete", 2),
    (html_as_image, "not an image", 1),
], ids=["connection closed mid-body", "body shorter than its Content-Length", "HTML as an image"])
def test_a_broken_download_leaves_no_file_and_is_counted(server, tmp_path, fault, reason, tries):
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg"),
              server.danbooru_post(BAD_MD5, "broken.jpg"))
    server.script("/img/broken.jpg", fault, fault)
    tally = crawl(server, tmp_path, "--site", "safebooru", "--retries", "1")
    assert tally.downloaded == 1 and tally.failed == {reason: 1}
    # A body that broke off is fetched once more (--retries 1); a whole one that is no image is not.
    assert server.requests_of("/img/broken.jpg") == tries
    assert f"Failed:      1 ({reason} 1)" in Crawler.format_summary(tally, seconds=1.0)
    assert kept_files(tmp_path) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg"]
    assert_clean(tmp_path)


@pytest.mark.parametrize("fault", [dropped_mid_body, cut_mid_body, short_body, stalled_mid_body(2)],
                         ids=["connection reset mid-body", "chunked body cut off",
                              "body shorter than its Content-Length", "read timeout mid-body"])
def test_a_body_that_breaks_off_is_fetched_again_and_kept_whole(server, tmp_path, fault):
    use_posts(server, server.danbooru_post(GOOD_MD5, "flaky.jpg"))
    server.script("/img/flaky.jpg", fault, fault)
    # --timeout 0.5: half a second of silence ends a read
    tally = crawl(server, tmp_path, "--site", "safebooru", "--retries", "2", "--timeout", "0.5")
    assert server.requests_of("/img/flaky.jpg") == 3
    assert tally.downloaded == 1 and not tally.failed
    assert (tmp_path / f"safebooru/{GOOD_MD5}.jpg").read_bytes() == server.body("/img/flaky.jpg")
    assert_clean(tmp_path)


def test_a_body_that_breaks_off_is_fetched_again_after_the_back_off(server, tmp_path, capsys):
    use_posts(server, server.danbooru_post(GOOD_MD5, "flaky.jpg"))
    server.drop_mid_body("/img/flaky.jpg", times=2)
    tally = crawl(server, tmp_path, "--site", "safebooru", "--backoff", "0.3")
    starts = [when for when, path, _ in server.log if path == "/img/flaky.jpg"]
    assert len(starts) == 3 and tally.downloaded == 1
    assert starts[1] - starts[0] >= 0.3 and starts[2] - starts[1] >= 0.6  # backoff * 2**(n-1)
    out = capsys.readouterr().out
    assert f"safebooru: try 1 of 6: the download of {server.url}/img/flaky.jpg broke off; trying " \
        "again in 0.3 s." in out
    assert "safebooru: try 2 of 6: the download of" in out and "broke off; trying again in 0.6 s." in out


@pytest.mark.parametrize("announced", [True, False], ids=["Content-Length", "chunked"])
def test_a_body_over_max_bytes_is_refused(server, tmp_path, announced):
    small = (SHARED_DATA / "illustrations" / "pdmera_test.jpg").read_bytes()  # 28 KB
    server.bodies["/img/small.jpg"] = small
    server.bodies["/img/big.jpg"] = (SHARED_DATA / "illustrations" / "xavierjiezou_test_2.jpg").read_bytes()
    if not announced:
        server.script("/img/big.jpg", without_length)
    use_posts(server, server.danbooru_post(GOOD_MD5, "small.jpg"),
              server.danbooru_post(BAD_MD5, "big.jpg"))
    tally = crawl(server, tmp_path, "--site", "safebooru", "--max-bytes", "100000")
    assert tally.downloaded == 1 and tally.failed == {"too large": 1}
    assert kept_files(tmp_path) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg"]
    assert (tmp_path / f"safebooru/{GOOD_MD5}.jpg").read_bytes() == small
    assert_clean(tmp_path)


@pytest.mark.parametrize("announced", [True, False], ids=["Content-Length", "chunked"])
def test_a_listing_page_over_its_limit_is_refused_in_one_line_without_being_read_whole(
        server, tmp_path, capsys, announced):
    server.script("/posts.json", large_page(30_000_000, announced))  # three times the limit
    tracemalloc.start()
    try:
        tally = crawl(server, tmp_path, "--site", "safebooru")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * 10_000_000  # at most the limit's worth of the page, never all of it
    assert (tally.pages, tally.site_errors) == (0, 1)
    assert f"safebooru: could not read page 1 of {server.url}/posts.json: the answer of {server.url[7:]} " \
        f"is larger than {Crawler.MAX_PAGE_BYTES:,} bytes, which no listing page is, so it was not " \
        "read; check --base-url and --api, then rerun to resume.\n" in capsys.readouterr().out


def test_posts_that_could_escape_or_are_not_images_are_never_fetched(server, tmp_path):
    deleted = {"id": 4, "md5": OTHER_MD5, "rating": "g"}  # no URL fields, as for deleted posts
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg", id=1),
              server.danbooru_post("../../x", "escape.jpg", id=2),
              server.danbooru_post(BAD_MD5, "payload.exe", id=3), deleted)
    tally = crawl(server, tmp_path / "out", "--site", "safebooru")
    assert tally.downloaded == 1
    assert tally.skipped == {"bad md5": 1, "file type": 1, "no URL": 1}
    assert server.image_paths() == ["/img/good.jpg"]
    assert kept_files(tmp_path) == ["out/manifest.jsonl", f"out/safebooru/{GOOD_MD5}.jpg"]


@pytest.mark.parametrize("site, field", [("safebooru", "large_file_url"), ("konachan", "sample_url")])
def test_a_post_whose_url_is_no_url_is_skipped_as_one_with_no_url_and_the_crawl_goes_on(
        server, tmp_path, site, field):
    if site == "safebooru":
        use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg", id=1),
                  server.danbooru_post(BAD_MD5, "number.jpg", id=2),
                  server.danbooru_post(OTHER_MD5, "unparsable.jpg", id=3))
        posts = server.danbooru_posts
    else:
        posts = server.moebooru_posts = [dict(post) for post in server.moebooru_posts[:3]]
    posts[1][field] = 5
    posts[2][field] = "http://[unclosed/x.jpg"  # urllib raises "Invalid IPv6 URL"
    tally = crawl(server, tmp_path, "--site", site)
    assert (tally.posts, tally.downloaded) == (3, 1)
    assert tally.skipped == {"no URL": 2} and not tally.failed
    assert len(server.image_paths()) == 1
    assert_clean(tmp_path)


def start_crawler(*flags):
    """Crawler.py as a user runs it, in a process of its own that Ctrl-C (SIGINT) can stop."""
    return start_script("Pretreatment/Crawler.py", *flags)


def test_ctrl_c_stops_cleanly_and_keeps_no_partial_file(server, tmp_path):
    server.bodies["/img/slow.jpg"] = (SHARED_DATA / "illustrations" / "xavierjiezou_test_4.jpg").read_bytes()
    server.script("/img/slow.jpg", slowly(seconds=20))
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg", id=1),
              server.danbooru_post(BAD_MD5, "slow.jpg", id=2),
              server.danbooru_post(OTHER_MD5, "never.jpg", id=3))
    out = tmp_path / "raw"
    crawler = start_crawler("--site", "safebooru", "--base-url", server.url, "--out", out,
                            "--delay", "0", "--workers", "1")
    deadline = time.monotonic() + 20
    temporary = out / "safebooru"
    while not list(temporary.glob(f".{BAD_MD5}.jpg.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    crawler.send_signal(signal.SIGINT)
    stdout, stderr = crawler.communicate(timeout=20)
    assert crawler.returncode == 130, stderr
    assert "Interrupted: no partial file was kept" in stdout
    assert "Traceback" not in stderr
    assert kept_files(out) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg"]
    assert_clean(out)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["Ctrl-C", "SIGTERM"])
def test_ctrl_c_or_sigterm_stops_a_download_that_trickles_within_seconds_and_keeps_no_partial_file(
        server, tmp_path, stop_signal):
    server.script("/img/slow.jpg", trickle(0.25))  # 4 bytes a second: no read waits long
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg", id=1),
              server.danbooru_post(BAD_MD5, "slow.jpg", id=2))
    out = tmp_path / "raw"
    crawler = start_crawler("--site", "safebooru", "--base-url", server.url, "--out", out,
                            "--delay", "0", "--workers", "1")
    try:
        deadline = time.monotonic() + 20
        while not list((out / "safebooru").glob(f".{BAD_MD5}.jpg.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        crawler.send_signal(stop_signal)
        signalled = time.monotonic()
        stdout, stderr = crawler.communicate(timeout=30)
        took = time.monotonic() - signalled
    finally:
        if crawler.poll() is None:
            crawler.kill()
            crawler.communicate()
    assert crawler.returncode == 130, stderr
    assert took < 10  # a tenth of a second or so; the rest is margin for a busy machine
    assert "Interrupted: no partial file was kept" in stdout and "Traceback" not in stderr
    assert kept_files(out) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg"]
    assert_clean(out)


def test_the_command_line_crawls_and_prints_a_summary(server, tmp_path):
    result = run_script("Pretreatment/Crawler.py", "--site", "konachan", "--base-url", server.url,
                        "--out", tmp_path, "--delay", "0")
    assert "Downloaded:  10" in result.stdout
    assert "Skipped:     0 (existing 0, rating 0, no URL 0)" in result.stdout
    assert "Failed:      0" in result.stdout


def test_an_unreachable_site_ends_in_one_sentence_and_exit_status_1(tmp_path, capsys):
    code = Crawler.main(["--site", "konachan", "--base-url", "http://127.0.0.1:9", "--out",
                         str(tmp_path), "--retries", "0"])
    out = capsys.readouterr().out
    assert code == 1
    assert ("konachan: could not read page 1 of http://127.0.0.1:9/post.json: 127.0.0.1:9 did not "
            "take the connection (Connection refused), 1 try in 0 s; check the connection and "
            "--base-url, then rerun to resume.") in out
    assert not [words for words in URLLIB3_WORDS if words in out]


def lines_as_they_come(process):
    """A queue that receives each line of the process's stdout as soon as it is written."""
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    return lines


@pytest.mark.slow
def test_a_site_that_never_answers_gets_a_line_within_seconds_with_the_default_timeout(tmp_path):
    with silent_host() as url:
        crawler = start_crawler("--site", "konachan", "--base-url", url, "--out", tmp_path)
        try:
            # The line is due after NOTICE_SECONDS (5), long before the first try's 30 s end;
            # 20 s leaves room for a busy machine.
            line = lines_as_they_come(crawler).get(timeout=20)
        finally:
            crawler.send_signal(signal.SIGINT)
            crawler.wait(timeout=20)
    assert line == (f"konachan: no answer from {url[7:]} yet after 5 s; waiting up to 30 s a try "
                    "(--timeout), 6 tries, giving up after 210 s.\n")
    assert crawler.returncode == 130 and "Traceback" not in crawler.stderr.read()


@pytest.mark.slow
def test_a_site_that_never_answers_is_retried_with_a_line_each_time_then_given_up_in_own_words(
        tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(Crawler, "NOTICE_SECONDS", 60)  # the first try's line is the test above's
    with silent_host() as url:
        code = Crawler.main(["--site", "konachan", "--base-url", url, "--out", str(tmp_path),
                             "--timeout", "1", "--retries", "2", "--backoff", "0"])
    out = capsys.readouterr().out
    host = url[7:]
    assert code == 1
    assert [line for line in out.splitlines() if host in line] == [
        f"konachan: try 1 of 3: {host} sent no answer within 1 s; trying again now.",
        f"konachan: try 2 of 3: {host} sent no answer within 1 s; trying again now.",
        f"konachan: could not read page 1 of {url}/post.json: {host} sent no answer within 1 s, "
        f"3 tries in {out.split(' tries in ')[1].split(' s;')[0]} s; check that the site is up, "
        "or give a slow one longer with --timeout, then rerun to resume."]
    assert not [words for words in URLLIB3_WORDS if words in out]


PAGE = json.dumps([]).encode() + b" " * 40  # a listing of no posts, that takes 21 s at 2 bytes a second


@pytest.mark.slow
@pytest.mark.parametrize("where", ["head", "body"])
def test_a_listing_that_trickles_is_given_up_at_the_timeout_of_the_whole_answer(server, tmp_path, capsys,
                                                                               where):
    slow = trickle(0.5, PAGE, head=where == "head")  # 2 bytes a second: no read waits long
    server.script("/posts.json", slow, slow)
    started = time.monotonic()
    tally = crawl(server, tmp_path, "--site", "safebooru", "--timeout", "1", "--retries", "1")
    took = time.monotonic() - started
    assert (tally.pages, tally.site_errors) == (0, 1)
    host, out = server.url[7:], capsys.readouterr().out
    if where == "head":  # retried by urllib3, as a silent site is
        assert server.requests_of("/posts.json") == 2
        assert f"safebooru: try 1 of 2: {host} sent no answer within 1 s; trying again now." in out
        assert (f"could not read page 1 of {server.url}/posts.json: {host} sent no answer within 1 s, "
                "2 tries in ") in out
    else:
        assert server.requests_of("/posts.json") == 1
        assert (f"safebooru: could not read page 1 of {server.url}/posts.json: {host} did not send all "
                "of the page within 1 s; check that the site is up, or give a slow one longer with "
                "--timeout, then rerun to resume.") in out
    assert took < 10  # 1 s a try; the rest is margin for a busy machine


def test_a_download_that_trickles_is_cut_at_the_timeout_fetched_again_and_counted_too_slow(
        server, tmp_path, capsys):
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg"),
              server.danbooru_post(BAD_MD5, "slow.jpg"))
    server.script("/img/slow.jpg", trickle(0.25), trickle(0.25))  # 4 bytes a second
    started = time.monotonic()
    tally = crawl(server, tmp_path, "--site", "safebooru", "--timeout", "1", "--retries", "1")
    took = time.monotonic() - started
    assert tally.downloaded == 1 and tally.failed == {"too slow": 1}
    assert server.requests_of("/img/slow.jpg") == 2
    assert (f"safebooru: try 1 of 2: the download of {server.url}/img/slow.jpg was not whole within 1 s "
            "(--timeout); trying again in 0.01 s.") in capsys.readouterr().out
    assert "Failed:      1 (too slow 1)" in Crawler.format_summary(tally, seconds=1.0)
    assert took < 10  # 1 s a try; the rest is margin for a busy machine
    assert kept_files(tmp_path) == ["manifest.jsonl", f"safebooru/{GOOD_MD5}.jpg"]
    assert_clean(tmp_path)


def test_help_states_the_timeout_and_when_a_silent_site_is_given_up(capsys):
    with pytest.raises(SystemExit):
        Crawler.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert ("--timeout TIMEOUT seconds one try of a request may take, from connecting to the last "
            "byte of its answer") in help_text
    assert "(default 30)" in help_text
    assert ("is given up after at most (--retries + 1) x --timeout seconds plus the back-off: "
            "210 s with the defaults") in help_text
    assert Crawler.give_up_seconds(timeout=30, retries=5, backoff=1) == 6 * 30 + (2 + 4 + 8 + 16)


def test_a_redirect_to_another_host_is_followed_and_the_manifest_records_where_the_file_came_from(
        server, tmp_path):
    with BooruServer(SHARED_DATA) as other:
        use_posts(server, server.danbooru_post(GOOD_MD5, "moved.jpg"))
        server.script("/img/moved.jpg", status(302, {"Location": f"{other.url}/img/there.jpg"}))
        tally = crawl(server, tmp_path, "--site", "safebooru")
        assert other.image_paths() == ["/img/there.jpg"]
        assert (tmp_path / f"safebooru/{GOOD_MD5}.jpg").read_bytes() == other.body("/img/there.jpg")
    assert tally.downloaded == 1
    assert [record["url"] for record in manifest(tmp_path)] == [f"{other.url}/img/there.jpg"]
    assert_clean(tmp_path)


def test_a_run_in_which_every_download_failed_exits_1_with_one_sentence(server, tmp_path, capsys):
    use_posts(server, server.danbooru_post(GOOD_MD5, "gone.jpg", id=1),
              server.danbooru_post(BAD_MD5, "also_gone.jpg", id=2))
    server.script("/img/gone.jpg", status(404))
    server.script("/img/also_gone.jpg", status(404))
    code = Crawler.main(["--site", "safebooru", "--base-url", server.url, "--out", str(tmp_path),
                         "--delay", "0"])
    captured = capsys.readouterr()
    assert code == 1
    assert "Failed:      2 (http 404 2)" in captured.out
    assert (f"Every one of the 2 downloads failed, so nothing was added to {tmp_path}: the summary "
            "above counts why; check --base-url and --size, then rerun to retry.") in (
        captured.err.splitlines())


def test_a_run_that_kept_some_downloads_exits_0_and_counts_the_failed_ones(server, tmp_path, capsys):
    use_posts(server, server.danbooru_post(GOOD_MD5, "good.jpg", id=1),
              server.danbooru_post(BAD_MD5, "gone.jpg", id=2))
    server.script("/img/gone.jpg", status(404))
    code = Crawler.main(["--site", "safebooru", "--base-url", server.url, "--out", str(tmp_path),
                         "--delay", "0"])
    captured = capsys.readouterr()
    assert code == 0 and "Failed:      1 (http 404 1)" in captured.out
    assert "Every one" not in captured.err


def test_a_backwards_page_range_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        Crawler.parse_args(["--pages", "5-2"])
    assert exit.value.code == 2
    assert "must count up" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, wanted", [
    ("--delay", "nan", "a number from 0 to 600"),  # would switch the rate limit off
    ("--delay", "inf", "a number from 0 to 600"),
    ("--delay", "1e300", "a number from 0 to 600"),  # beyond what a clock's wait can count
    ("--delay", "-1", "a number from 0 to 600"),
    ("--timeout", "nan", "a number from 0.1 to 600"),  # would be blamed on the site
    ("--timeout", "inf", "a number from 0.1 to 600"),
    ("--timeout", "0", "a number from 0.1 to 600"),
    ("--retries", "100000000", "a whole number from 0 to 20"),
    ("--retries", "-1", "a whole number from 0 to 20"),
    ("--backoff", "nan", "a number from 0 to 120"),
    ("--backoff", "inf", "a number from 0 to 120"),
    ("--workers", "0", "a whole number from 1 to 64"),
    ("--workers", "1000000000000", "a whole number from 1 to 64"),
    ("--limit", "0", "a whole number of at least 1"),
    ("--max-bytes", "0", "a whole number of at least 1"),
    ("--base-url", "http://[unclosed", "an http:// or https:// address"),
    ("--base-url", "ftp://example.org", "an http:// or https:// address"),
])
def test_a_flag_out_of_its_range_is_a_usage_error_that_gives_the_range(capsys, flag, value, wanted):
    with pytest.raises(SystemExit) as exit:
        Crawler.parse_args([flag, value])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"error: argument {flag}: '{value}' is not {wanted}")


def test_the_ends_of_each_network_flags_range_are_accepted():
    largest = Crawler.parse_args(["--workers", "64", "--delay", "600", "--timeout", "600",
                                  "--retries", "20", "--backoff", "120"])
    assert (largest.workers, largest.delay, largest.timeout, largest.retries, largest.backoff) == (
        64, 600.0, 600.0, 20, 120.0)
    smallest = Crawler.parse_args(["--workers", "1", "--delay", "0", "--timeout", "0.1",
                                   "--retries", "0", "--backoff", "0"])
    assert (smallest.workers, smallest.delay, smallest.timeout, smallest.retries, smallest.backoff) == (
        1, 0.0, 0.1, 0, 0.0)


def test_a_full_disk_ends_the_crawl_in_one_sentence_with_status_2_and_no_partial_file(server, tmp_path, capsys,
                                                                                   monkeypatch):
    def full_disk(response, temp, *rest):
        Path(temp).write_bytes(b"half an image")
        raise OSError(errno.ENOSPC, "No space left on device", str(temp))

    monkeypatch.setattr(Crawler, "save_body", full_disk)
    code = Crawler.main(["--site", "safebooru", "--base-url", server.url, "--out", str(tmp_path), "--delay", "0",
                         "--backoff", "0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    last = err.splitlines()[-1]  # under the progress bar
    assert last.startswith("error: /") and last.endswith(
        ".tmp could not be written: the disk is full (No space left on device); free some space and run it again.")


def test_an_os_error_that_is_not_the_machines_stays_a_traceback(server, tmp_path, monkeypatch):
    def broken(response, temp, *rest):
        raise OSError(errno.EIO, "Input/output error")  # a bug's, or a dying disk's: not for one sentence

    monkeypatch.setattr(Crawler, "save_body", broken)
    with pytest.raises(OSError, match="Input/output error"):
        Crawler.main(["--site", "safebooru", "--base-url", server.url, "--out", str(tmp_path), "--delay", "0",
                      "--backoff", "0.01"])
    assert_clean(tmp_path)
