"""Helpers for tests and benchmarks, never imported by product code.

- ``fake_engine``: a stand-in engine process that speaks the plugin's HTTP and
  ZeroMQ surface, for the coordinator's plumbing (never the proof that the
  system works: tests of that start a real vLLM engine).
"""
