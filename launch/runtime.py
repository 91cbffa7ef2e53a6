"""Process-wide settings that only an entry point may make (never library code)."""

from __future__ import annotations

import ctypes


def tune_glibc_malloc(threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes; False where that is not possible.

    glibc serves blocks above its mmap threshold (at most 32 MB by default) with fresh ``mmap`` pages
    and unmaps them on free, so a large tensor allocated every update costs page faults and kernel
    zeroing each time. This is process-wide and belongs to an entry point, never to library code.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, 2 * threshold))
    except (OSError, AttributeError):
        return False
