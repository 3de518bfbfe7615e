"""The optional C accelerator of the guest tracepoints (everything else is in
pyproject.toml). Built whenever a C compiler and the Python headers are present;
without them the install goes on and the pure-Python tracepoints are used."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "hypertrace.guest._accel", ["src/hypertrace/native/accel.c"],
    depends=["src/hypertrace/native/tsc_clock.h"],
    extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
    optional=True)])
