"""Benchmark kit (tools/ only, no TensorFlow): the real daemon code against a twin on one stepped
clock, so twelve hours of session run in minutes and repeat exactly."""
