"""Load a trace-events file whole and emit every one of its events once, with values
drawn from each argument type's extremes; write what was emitted (JSON lines: name,
fields as they must read back) to argv[2]. Used with QEMU's trace-events-all."""
import json
import sys

from hypertrace import abi, guest

LONG = "x" * 700 + "é" * 400            # 1 500 bytes: cut to 1 024 at a UTF-8 boundary
STRINGS = ["", "plain", "non-ASCII: é ü 漢字 🚀", "%s %d %n \\ \" '", LONG]


def ints(ft):
    bits = ft.size * 8
    if ft.signed:
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return [0, -1, lo, hi, 1]
    return [0, (1 << bits) - 1, 1, 1 << (bits - 1)]


def value(ft, k):
    """The k-th test value of a field of type ft, and how it must read back."""
    if ft.kind == "str":
        s = STRINGS[k % len(STRINGS)]
        b = s.encode()
        if len(b) > abi.STR_MAX:
            n = abi.STR_MAX
            while b[n] & 0xC0 == 0x80:           # cut before a character, not inside
                n -= 1
            b = b[:n]
        return s, b.decode()
    if ft.kind == "bool":
        return [True, False][k % 2], [True, False][k % 2]
    if ft.kind == "float":
        v = [0.0, -1.5, 1e300 if ft.size == 8 else 3.0e38][k % 3]
        return v, v
    if ft.char and k % 3 == 2:
        return "A", 65                           # a char given as a one-character str
    if ft.hex and k % 4 == 3:
        return None, 0                           # a NULL pointer
    vs = ints(ft)
    v = vs[k % len(vs)]
    return v, v


def main() -> None:
    events = guest.load(sys.argv[1])
    out = open(sys.argv[2], "w")
    n = 0
    for i, tp in enumerate(events):
        call, expect = [], {}
        for j, (name, _, ft) in enumerate(tp.decl.fields):
            v, back = value(ft, i + j)
            call.append(v)
            expect[name] = back
        tp(*call)
        out.write(json.dumps({"name": tp.name, "fields": expect}) + "\n")
        n += 1
    out.close()
    print("EMITTED", n, "DECLARED", sum(1 for tp in events if tp.event_id is not None))


main()
