"""The TSC clock (native/tsc_clock.h) of the C producer: CLOCK_MONOTONIC to within
its tracking error, never backwards in a thread, and the same records as with
clock_gettime (HYPERTRACE_TSC=0). The Python accelerator's use of the same clock
is tests/test_accel.py's."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import build_c, env, hypertrace, record, stats

APP = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "trace.h"
#define N 20000
static uint64_t mono(void) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}
static uint64_t after[2][N];
static void *run(void *arg) {
    uint64_t t = (uint64_t)(uintptr_t)arg;
    for (uint64_t i = 0; i < N; i++) {
        trace_bracket(t, i, mono());
        after[t][i] = mono();
        if (i % 2000 == 0) {
            struct timespec d = {0, 20000000};     /* idle: the line extrapolates */
            nanosleep(&d, NULL);
        }
    }
    return NULL;
}
int main(void) {
    pthread_t th[2];
    for (uintptr_t t = 0; t < 2; t++) pthread_create(&th[t], NULL, run, (void *)t);
    for (int t = 0; t < 2; t++) pthread_join(th[t], NULL);
    double err;
    const char *clk = hypertrace_clock(&err);
    printf("{\"clock\": \"%s\", \"max_error_ns\": %.1f, \"after\": [", clk, err);
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < N; i++)
            printf("%s%llu", t || i ? ", " : "", (unsigned long long)after[t][i]);
    printf("]}\n");
    return 0;
}
"""


def _build(tmp_path) -> str:
    return build_c(tmp_path, "bracket(uint64_t t, uint64_t i, uint64_t before)\n", APP)


@pytest.mark.parametrize("tsc", ["1", "0"])
def test_c_records_are_clock_monotonic(tmp_path, tsc):
    exe = _build(tmp_path)
    out = str(tmp_path / "s")
    r = record(out, exe, opts=("--mode", "block"), env=env(HYPERTRACE_TSC=tsc))
    said = json.loads(r.stdout.splitlines()[0])
    if tsc == "0":
        assert said["clock"] == "monotonic"
    elif said["clock"] != "tsc":
        pytest.skip("no invariant TSC used as the kernel's clocksource here")
    ev = [e for e in map(json.loads, hypertrace("report", out, "--json").stdout.splitlines())
          if e["name"] == "bracket"]
    n = 20000
    margin = 50_000       # far wider than the tracking error, far below a broken line's
    for t in range(2):
        mine = [e for e in ev if e["fields"]["t"] == t]
        assert [e["fields"]["i"] for e in mine] == list(range(n))
        raw = [e["raw_ts"] for e in mine]
        assert raw == sorted(raw), "a thread's times went back"
        for e, after in zip(mine, said["after"][t * n:(t + 1) * n]):
            assert e["fields"]["before"] - margin <= e["raw_ts"] <= after + margin, e
    assert 0 <= said["max_error_ns"] < margin
    clock = stats(out)["clocks"]["local"]
    assert clock["kind"] == "estimated" and clock["causality_violations"] == 0


def test_tsc_clock_header_builds_alone_for_aarch64(tmp_path):
    """Without a TSC (aarch64) the clock compiles to clock_gettime only, and the
    producer's header still compiles in a strict ISO C translation unit."""
    cc = "aarch64-linux-gnu-gcc"
    if subprocess.run(["sh", "-c", "command -v " + cc], capture_output=True).returncode:
        pytest.skip(cc + " is not installed")
    native = os.path.dirname(hypertrace("c-config", "--cflags").stdout.split()[0][2:] + "/")
    (tmp_path / "t.c").write_text(
        "#define _POSIX_C_SOURCE 200809L\n#define HT_TSC_IMPLEMENTATION\n"
        '#include "tsc_clock.h"\nint main(void) { static ht_tsc_clock c;'
        " return ht_tsc_start(&c, 0); }\n")
    # and a strict ISO C program using the producer's header (no POSIX clock there)
    (tmp_path / "u.c").write_text('#include "hypertrace.h"\nint f(void);\n'
                                  "int f(void) { return (int)ht__now(); }\n")
    for src in ("t.c", "u.c"):
        subprocess.run([cc, "-std=c11", "-pedantic", "-Wall", "-Wextra", "-Werror",
                        "-I" + native, "-c", "-o", str(tmp_path / (src + ".o")),
                        str(tmp_path / src)], check=True, timeout=120)


@pytest.mark.parametrize("flags", [("-D_GNU_SOURCE",), ("-D_POSIX_C_SOURCE=200809L",),
                                   ("-D_XOPEN_SOURCE=700",), ("-std=gnu11",)])
def test_runtime_builds_under_the_programs_feature_macros(tmp_path, flags):
    """A program's own CFLAGS (feature macros, a GNU dialect) must not take the TSC clock's
    implementation out of the runtime: the link would fail."""
    build_c(tmp_path, "bracket(uint64_t t, uint64_t i, uint64_t before)\n", APP, cflags=flags)
