"""Emit the same calls through every field type, edge cases included, and print each
call's outcome: run once accelerated and once with HYPERTRACE_PURE=1, the two runs
must record the same events and print the same outcomes (tests/test_accel.py)."""

import array
import json
import sys

from hypertrace import guest


class MyInt(int):
    pass


class MyStr(str):
    def encode(self, *a, **k):          # must not decide what is recorded
        return b"forged"


class Index:
    def __index__(self):
        return 7


ints = guest.event("ints", "int8_t a, uint8_t b, int16_t c, uint16_t d, int32_t e, "
                   "uint32_t f, int64_t g, uint64_t h")
flt = guest.event("flt", "float x, double y")
boo = guest.event("boo", "bool b, int n")
txt = guest.event("txt", "const char *s, int n, const char *t")
byt = guest.event("byt", "bytes b, uint16_t n")
chp = guest.event("chp", "char c, void *p, unsigned char u")
none = guest.event("none", "void")
kw = guest.event("kw", "int from, int in")
off = guest.event("off", "int a, int b", disabled=True)


class Holder:
    bound = ints                        # a class attribute binds, as a function does


bound = Holder().bound

B = 2 ** 63
cases = [
    (ints, (0, 0, 0, 0, 0, 0, 0, 0)),
    (ints, (-128, 255, -32768, 65535, -2 ** 31, 2 ** 32 - 1, -B, 2 ** 64 - 1)),
    (ints, (127, 0, 32767, 0, 2 ** 31 - 1, 0, B - 1, 0)),
    (ints, (128, 0, 0, 0, 0, 0, 0, 0)),                  # out of range: an error
    (ints, (0, -1, 0, 0, 0, 0, 0, 0)),
    (ints, (0, 0, 0, 0, 0, 0, 0, -1)),
    (ints, (0, 0, 0, 0, 0, 0, 0, 2 ** 64)),
    (ints, (0, 0, 0, 0, 0, 0, B, 0)),
    (ints, (MyInt(5), True, 0, 0, 0, 0, Index(), 0)),
    (ints, (0, 0, 0, 0, 0, 0, 0, 1.5)),                  # float for an int: an error
    (ints, (0, 0, 0)),                                  # too few: TypeError
    (flt, (1.5, -2.25)),
    (flt, (1e39, 0.0)),                                 # float overflow: an error
    (flt, (float("inf"), float("nan"))),
    (flt, (3, 4)),                                      # ints for floats
    (flt, (3.4028235677973366e38, 1e308)),
    (boo, (True, 1)), (boo, (False, 0)), (boo, (1, 2)), (boo, (0, 3)), (boo, ("x", 4)),
    (txt, ("", 0, "")), (txt, ("héllo wörld ✓", 1, "\u0000nul")),
    (txt, ("x" * 70000, 2, "y")),                       # cut at STR_MAX
    (txt, ("é" * 40000, 3, "z")),                       # cut on a UTF-8 boundary
    (txt, ("a\ud800b", 4, "surrogate")),
    (txt, (MyStr("mine"), 5, "sub")),
    (txt, (b"bytes", 6, "not a str")),
    (txt, (None, 7, "none")),
    (byt, (b"\x00\x01\xff", 1)), (byt, (bytearray(b"ba"), 2)), (byt, (memoryview(b"mv"), 3)),
    (byt, (array.array("B", [1, 2]), 4)), (byt, (b"q" * 70000, 5)), (byt, ("str", 6)),
    (chp, ("A", None, 200)), (chp, (65, 0xDEADBEEF, "\xff")), (chp, ("AB", 1, 1)),
    (chp, (-1, 1, 1)),
    (none, ()), (none, (1,)),
    (off, (1, 2)), (off, (1,)), (off, ("not", "checked")),
    (bound, (0, 0, 0, 0, 0, 0, 0)), (bound, (0, 0, 0, 0, 0, 0, 0, 0)),
]
out = []
for tp, args in cases:
    try:
        tp(*args)
        out.append("ok")
    except Exception as e:
        out.append("%s: %s" % (type(e).__name__, e))
for args, kwargs in (((), {"from_": 1, "in_": 2}), ((), {"from_": 3}), ((4,), {"in_": 5}),
                     ((4,), {"bogus": 5})):
    try:
        kw(*args, **kwargs)
        out.append("ok")
    except Exception as e:
        out.append("%s: %s" % (type(e).__name__, e))
print(json.dumps({"accelerated": guest.ACCELERATED,
                  "type": type(ints).__name__, "outcomes": out}))
sys.stdout.flush()
