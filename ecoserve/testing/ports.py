"""A free TCP port, for tests and benchmarks that start servers of their own.

One definition, the engine launcher's (``ecoserve.engine.process``): the port
is released before it returns, so another process could take it before the
caller binds it; good enough for starting test servers."""

from ecoserve.engine.process import free_port

__all__ = ["free_port"]
