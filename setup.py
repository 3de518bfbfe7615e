"""The optional C extensions: the guest tracepoints' accelerator and the collector's
walk of ring data and its decoder of ftrace pages (everything else is in pyproject.toml). Built whenever a C compiler
and the Python headers are present; without them the install goes on and the pure
Python (and numpy) paths are used. The collector's USDT probes (host/_probes) use
sys/sdt.h where it is installed; HYPERTRACE_NO_SDT=1 builds them without (they fire
nothing, `hypertrace usdt` says so)."""

import os

from setuptools import Extension, setup

FLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
         "-Wno-missing-field-initializers", "-Wno-cast-function-type"]

setup(ext_modules=[
    Extension("hypertrace.guest._accel", ["src/hypertrace/native/accel.c"],
              depends=["src/hypertrace/native/tsc_clock.h"], extra_compile_args=FLAGS,
              optional=True),
    Extension("hypertrace.host._walk", ["src/hypertrace/native/walk.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("hypertrace.read._gather", ["src/hypertrace/native/gather.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("hypertrace.read._rows", ["src/hypertrace/native/rows.c"],
              extra_compile_args=FLAGS, optional=True),
    Extension("hypertrace.host._probes", ["src/hypertrace/native/probes.c"],
              extra_compile_args=FLAGS, optional=True,
              define_macros=[("HT_NO_SDT", "1")] if os.environ.get("HYPERTRACE_NO_SDT") else []),
    Extension("hypertrace.host._ftrace", ["src/hypertrace/native/ftrace.c"],
              extra_compile_args=FLAGS, optional=True),
])
