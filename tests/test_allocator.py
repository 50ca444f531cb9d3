"""The CPU allocator setting training applies: glibc keeps freed memory for large tensors."""

from __future__ import annotations

import platform

from models.allocator import reuse_freed_memory


def test_reuse_freed_memory_applies_on_glibc_only_and_once():
    applied = reuse_freed_memory()
    assert applied is (platform.libc_ver()[0] == "glibc")
    assert reuse_freed_memory() is applied  # cached: one call per process
    assert reuse_freed_memory.cache_info().hits >= 1
