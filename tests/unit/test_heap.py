"""The agent's heap levers reach glibc's malloc (and do nothing elsewhere)."""

from __future__ import annotations

import ctypes
import platform

import pytest

from meshctl.agent import heap

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="needs glibc's malloc")


@glibc_only
def test_trim_gives_freed_heap_back() -> None:
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4096) for _ in range(20_000)]  # 80 MB of small blocks: heap, not mmap
    assert all(blocks)
    for block in blocks:
        libc.free(block)
    assert heap.trim() is True  # malloc_trim itself answered that pages went back to the kernel


@glibc_only
def test_arena_cap_is_accepted() -> None:
    assert heap.limit_arenas(8) is True
