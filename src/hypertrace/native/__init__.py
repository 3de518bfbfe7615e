"""The native (C) producer: hypertrace.h, hypertrace.c and the gen-c generator."""
