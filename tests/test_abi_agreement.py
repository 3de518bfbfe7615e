"""Python and C agree on the channel ABI by a test (docs/abi.md, first paragraph).

A small C program includes src/hypertrace/native/hypertrace.h, and the runtime
hypertrace.c itself, and prints every ABI number they name: the header's public
`HT_*` constants (all required) and the runtime's private macros (those it
defines). Each is compared with hypertrace.abi's constant of the same name, and
the runtime's timing constants with the Python producer's (guest/channel.py).
docs/abi.md's own tables are compared with hypertrace.abi in test_harden_guest.py
(test_abi_doc_and_constants_agree).
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess

import pytest

from hypertrace import abi

# modules (`hypertrace.guest.channel` the attribute is a function of that package)
channel = importlib.import_module("hypertrace.guest.channel")
mailbox = importlib.import_module("hypertrace.guest.mailbox")

CC = shutil.which("cc") or shutil.which("gcc")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler (cc/gcc)")
NATIVE = os.path.join(os.path.dirname(__file__), "..", "src", "hypertrace", "native")

# hypertrace.abi's name for a public header constant HT_<name>, where it is not <name>
RENAMED = {"REC_HEADER": "REC_HEADER_SIZE", "FLAG_TRUNCATED": "REC_FLAG_TRUNCATED"}
# header constants that hypertrace.abi has in another form
DERIVED = {
    "CTL_HEADER_SIZE": abi.CTL_HEADER.size,
    "REC_ID": 0, "REC_SIZE_FLAGS": 2, "REC_SEQ": 4, "REC_TS": 8,
}
# the public constants hypertrace.h must define: every one of these names
PUBLIC = [
    "ABI_MAJOR", "ABI_MINOR", "MAGIC", "PAGE", "HEADER_SIZE",
    "HDR_MAGIC", "HDR_ABI_MAJOR", "HDR_ABI_MINOR", "HDR_HEADER_SIZE", "HDR_REGION_SIZE",
    "HDR_SESSION_ID", "HDR_NAME", "HDR_N_RINGS", "HDR_RING_SIZE", "HDR_MAX_EVENTS",
    "HDR_MODE", "HDR_BLOCK_TIMEOUT", "HDR_ENABLE_OFF", "HDR_DECL_OFF", "HDR_DESC_OFF",
    "HDR_DATA_OFF", "HDR_COLLECTOR", "HDR_FLAGS", "HDR_HEARTBEAT", "NAME_LEN",
    "FLAG_MAILBOXES", "COLLECTOR_NONE", "COLLECTOR_RUNNING", "COLLECTOR_STOPPED",
    "MODE_DISCARD", "MODE_BLOCK", "MODE_OVERWRITE",
    "MBOX_OFF", "MBOX_SIZE", "N_MBOX", "M_STATE", "M_PID", "M_REQ", "M_ANS", "M_T1",
    "M_T2", "M_T3", "M_T4", "M_DONE", "MBOX_FREE", "MBOX_CLAIMED",
    "CNT_OFF", "CNT_SIZE", "N_CNT", "C_LOST", "C_DECL_REFUSED", "CNT_MAX",
    "F_OFD_GETLK", "F_OFD_SETLK",
    "DECL_SLOT", "DECL_STATE", "DECL_LEN", "DECL_TEXT", "DECL_TEXT_MAX", "DECL_EMPTY",
    "DECL_VALID", "MAX_EVENT_ID", "MAX_FIELDS", "MAX_NAME",
    "DESC_SIZE", "D_COMMIT", "D_EMITTED", "D_FIRST", "D_DISCARDED", "D_CONSUMED",
    "D_STATE", "D_GENERATION", "D_PID", "D_TID", "D_CLAIM_TS", "D_THREAD_NAME",
    "THREAD_NAME_LEN", "RING_FREE", "RING_ACTIVE", "RING_RELEASED",
    "REC_HEADER", "REC_ID", "REC_SIZE_FLAGS", "REC_SEQ", "REC_TS", "REC_ALIGN", "REC_MAX",
    "REC_SIZE_MASK", "FLAG_TRUNCATED", "PAD_ID", "MAX_TS", "STR_MAX",
    "CTL_MAGIC", "CTL_VERSION", "CTL_HEADER_SIZE", "CTL_MAX_PAYLOAD",
    "MSG_HELLO", "MSG_HELLO_OK", "MSG_SYNC", "MSG_SYNC_OK", "MSG_CLOCK", "MSG_CLOCK_OK",
    "MSG_SAMPLE", "MSG_ERROR", "MSG_BYE",
]
# the runtime's private macros (hypertrace.c), where it defines them, and their value
NS = 10**9
PRIVATE = {
    **{n: getattr(abi, n) for n in PUBLIC if hasattr(abi, n)},
    "F_OFD_SETLK_": abi.F_OFD_SETLK, "F_OFD_GETLK_": abi.F_OFD_GETLK,
    "CTL_HEADER_SIZE": abi.CTL_HEADER.size,
    # the Python producer's timing (guest/channel.py, guest/mailbox.py)
    "GUARD_NS": round(channel.GUARD_S * NS),
    "DECL_WAIT_NS": round(channel.DECL_WAIT_S * NS),
    "CLAIM_RETRY_NS": round(channel.CLAIM_RETRY_S * NS),
    "COUNT_RETRY_NS": round(channel.COUNT_RETRY_S * NS),
    "DECL_RETRY_MIN": round(channel.DECL_RETRY_S[0] * NS),
    "DECL_RETRY_MAX": round(channel.DECL_RETRY_S[1] * NS),
    "MBOX_WAIT_NS": round(mailbox.WAIT_S * NS),
}


def expected_public(name: str) -> int:
    if name in DERIVED:
        return DERIVED[name]
    return getattr(abi, RENAMED.get(name, name))


def _program() -> str:
    lines = ['#include "hypertrace.c"', "#include <stdio.h>", "int main(void) {"]
    for n in PUBLIC:
        lines += ["#ifdef HT_%s" % n,
                  '    printf("HT_%s %%llu\\n", (unsigned long long)(HT_%s));' % (n, n),
                  "#else", '    printf("HT_%s missing\\n");' % n, "#endif"]
    for n in PRIVATE:
        lines += ["#ifdef %s" % n,
                  '    printf("%s %%llu\\n", (unsigned long long)(%s));' % (n, n),
                  "#endif"]
    lines += ["    return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_values(tmp_path_factory):
    d = tmp_path_factory.mktemp("abi_c")
    src = d / "abi.c"
    src.write_text(_program())
    exe = str(d / "abi")
    r = subprocess.run([CC, "-std=c11", "-O0", "-w", "-I", NATIVE, "-o", exe, str(src),
                        "-pthread"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([exe], capture_output=True, text=True, timeout=30, check=True,
                         env={"PATH": os.environ.get("PATH", "")}).stdout
    vals = {}
    for line in out.splitlines():
        name, value = line.split()
        vals[name] = value
    return vals


def test_the_header_names_every_abi_constant_and_each_agrees(c_values):
    missing = [n for n in PUBLIC if c_values.get("HT_" + n) == "missing"]
    assert not missing, "hypertrace.h lacks %s" % missing
    wrong = {n: (int(c_values["HT_" + n]), expected_public(n)) for n in PUBLIC
             if int(c_values["HT_" + n]) != expected_public(n)}
    assert not wrong, "hypertrace.h (C, Python): %s" % wrong
    print("FIGURES header constants compared:", len(PUBLIC))


def test_the_runtime_uses_the_same_numbers(c_values):
    """hypertrace.c's own macros (offsets, limits, timing): each one it defines agrees
    with hypertrace.abi (or the Python producer's timing)."""
    seen = {n: int(v) for n, v in c_values.items() if not n.startswith("HT_")}
    wrong = {n: (v, PRIVATE[n]) for n, v in seen.items() if v != PRIVATE[n]}
    assert not wrong, "hypertrace.c (C, Python): %s" % wrong
    # the ones the runtime has always had: a rename must be seen here, not skipped
    for n in ("MAGIC", "HDR_N_RINGS", "HDR_HEARTBEAT", "CNT_OFF", "DECL_SLOT",
              "DESC_SIZE", "D_COMMIT", "D_CONSUMED", "D_THREAD_NAME", "PAD_ID",
              "DECL_WAIT_NS", "CLAIM_RETRY_NS"):
        assert n in seen, "hypertrace.c no longer defines %s" % n
    print("FIGURES runtime macros compared:", len(seen))


def test_the_header_matches_its_own_inline_code(c_values):
    """The inline fast path writes the record header at fixed offsets (ht__begin):
    what the named constants say."""
    text = open(os.path.join(NATIVE, "hypertrace.h"), encoding="utf-8").read()
    assert "memcpy(p + %s, &seq, 4);" % c_values["HT_REC_SEQ"] in text
    assert "memcpy(p + %s, &ts, 8);" % c_values["HT_REC_TS"] in text
    assert "return p + HT_REC_HEADER;" in text
