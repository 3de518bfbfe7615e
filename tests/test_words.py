"""Shared words move in one access (docs/abi.md §5): a peer reading while one is
written sees the old value or the new one, never 0 or a mix of bytes. With
struct.pack_into (what the Python library used) the same reader saw a torn value
in 1 read of 20 on this machine: a released ring read as free, its stream
finished early and read again from the start (CI: 3 events of 1 000 threads
recorded twice; a TCG guest's thread recorded twice)."""

from __future__ import annotations

import mmap
import os
import time

import pytest

from hypertrace import abi

A32, B32 = 0x01010101, 0x02020202
A64, B64 = 0x0101010101010101, 0x0202020202020202


@pytest.mark.parametrize("bits", [32, 64])
def test_a_word_written_by_another_process_is_never_read_torn(bits):
    mm = mmap.mmap(-1, 4096)
    w = abi.Words(mm)
    get, put, a, b = ((w.u32, w.set_u32, A32, B32) if bits == 32
                      else (w.u64, w.set_u64, A64, B64))
    put(64, a)
    pid = os.fork()
    if pid == 0:                              # the writer: flips the word for 0.6 s
        end = time.monotonic() + 0.6
        while time.monotonic() < end:
            for _ in range(500):
                put(64, b)
                put(64, a)
        os._exit(0)
    seen, torn = set(), 0
    end = time.monotonic() + 0.8
    while time.monotonic() < end:
        for _ in range(500):
            v = get(64)
            if v not in (a, b):
                torn += 1
            seen.add(v)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert torn == 0, "torn reads: %d (%s)" % (torn, sorted(hex(x) for x in seen)[:5])
    assert b in seen                          # the writer ran meanwhile


def test_words_are_the_abis_little_endian_values_and_refuse_unaligned_offsets():
    buf = bytearray(64)
    w = abi.Words(buf)
    w.set_u32(4, 0x11223344)
    w.set_u64(8, 0x0102030405060708)
    assert buf[4:8] == bytes.fromhex("44332211")
    assert buf[8:16] == bytes.fromhex("0807060504030201")
    assert w.u32(4) == 0x11223344 and w.u64(8) == 0x0102030405060708
    for bad in (lambda: w.u32(2), lambda: w.set_u64(4, 1), lambda: w.u64(12)):
        with pytest.raises(ValueError):
            bad()
