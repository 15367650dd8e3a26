"""The CPU settings Utils makes before Paddle loads (benchmarks/README.md says what each is worth).
Each check runs in a fresh Python, since the settings only act at process start."""
import Utils

import os
import sys

import pytest

from conftest import run_script


def fresh_python(code, **env):
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("MKL_DEBUG_CPU_TYPE", "MALLOC_"))}
    return run_script("-c", code, env={**environment, **env}).stdout.split()


def test_mkl_is_pointed_at_avx2_on_amd_processors_only():
    setting, = fresh_python("import os, Utils; print(os.environ.get('MKL_DEBUG_CPU_TYPE', 'unset'))")
    assert setting == ("5" if "AuthenticAMD" in Utils.cpu_vendor() else "unset")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings are Linux only")
def test_freed_tensor_memory_is_reused_without_page_faults():
    # Ten 38 MB tensors, each freed before the next: with glibc's defaults each is a fresh mmap
    # whose pages fault in again (about 9,200 faults apiece); kept in the heap, the memory is
    # reused (0 faults in most runs, one tensor's worth in a few).
    code = """import resource, Utils, paddle
x = paddle.ones([64, 64, 48, 48]); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = paddle.ones([64, 64, 48, 48]); del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)"""
    kept, = fresh_python(code)
    glibc_default, = fresh_python(code, MALLOC_MMAP_MAX_="65536")  # a user's own setting wins
    assert int(kept) < 25_000 < 60_000 < int(glibc_default)
