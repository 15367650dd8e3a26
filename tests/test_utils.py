"""The CPU settings Utils makes before Paddle loads (benchmarks/README.md says what each is worth).
Each check runs in a fresh Python, since the settings only act at process start."""
import Utils

import argparse
import errno
import os
import sys

import pytest

import Files
from conftest import run_script


def fresh_python(code, **env):
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("MKL_DEBUG_CPU_TYPE", "MALLOC_"))}
    return run_script("-c", code, env={**environment, **env}).stdout.split()


def test_mkl_is_pointed_at_avx2_on_amd_processors_only():
    setting, = fresh_python("import os, Utils; print(os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset'))")
    assert setting == ("5" if "AuthenticAMD" in Utils.cpu_vendor() else "unset")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are Linux only")
def test_freed_tensor_memory_is_reused_without_page_faults():
    # Twenty 38 MB tensors, each freed before the next. With glibc's defaults each is a fresh mmap
    # whose pages all fault in again; kept in the heap, the block is reused without a fault.
    # Not always at once: when a small block lands just above a freed tensor, glibc 2.36's
    # posix_memalign (Paddle aligns CPU tensors to 4 KB) cannot fit the next tensor into the free
    # chunk of the same size, and the heap grows by a tensor of fresh pages. Where the small
    # blocks land differs from run to run, more so on a busy machine, and has grown the heap for
    # up to five tensors in a row before the block stayed put; so the test counts the faults of
    # the best tensor, which a lost setting leaves at a whole tensor's pages.
    code = """import resource, Utils, paddle
x = paddle.ones([64, 64, 48, 48]); del x
faults = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = paddle.ones([64, 64, 48, 48]); del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(*faults)"""
    tensor_pages = 64 * 64 * 48 * 48 * 4 // os.sysconf("SC_PAGE_SIZE")
    kept = [int(count) for count in fresh_python(code)]
    glibc_default = [int(count) for count in fresh_python(code, MALLOC_MMAP_MAX_="65536")]  # a user's own setting wins
    assert min(glibc_default) >= tensor_pages  # every tensor faults all its pages in
    assert min(kept) < tensor_pages // 100


@pytest.mark.parametrize("number, words", [
    (errno.ENOSPC, "/out/avatars.png could not be written: the disk is full (No space left on device); free some "
                   "space and run it again."),
    (errno.EROFS, "/out/avatars.png cannot be written (Read-only file system); fix its permissions or name another "
                  "place.")])
def test_an_os_error_of_the_machine_is_one_sentence_with_status_2(number, words, capsys):
    def main():
        raise OSError(number, os.strerror(number), "/out/avatars.png")
    with pytest.raises(SystemExit) as ended:
        Utils.run_main(main)
    assert ended.value.code == 2 and capsys.readouterr().err == f"error: {words}\n"


def test_any_other_os_error_stays_a_traceback_since_it_may_be_a_bug():
    def main():
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))
    with pytest.raises(OSError):
        Utils.run_main(main)


def test_a_path_too_long_for_the_file_system_is_one_sentence_and_not_written_out_whole(tmp_path):
    output = tmp_path / ("a" * 300)
    result = run_script("Run.py", "--output", output, "--grid", "1x1", "--dims", "0", "--steps", "1", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().endswith("is too long a name for the file system (File name too long); use a "
                                          "shorter path.")
    assert len(result.stderr) < 250 and f"...{'a' * 30} is too long" in result.stderr  # shortened in the middle


def test_a_range_without_a_most_still_refuses_infinity_and_nan():
    at_least_zero = Files.within(float, 0)
    assert at_least_zero("1e300") == 1e300
    for text in ("inf", "nan", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"'{text}' is not a number of at least 0"):
            at_least_zero(text)
