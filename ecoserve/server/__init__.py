"""The front door: an OpenAI-compatible HTTP API over the coordinator.

``create_app(coordinator, api_key=None)`` returns the FastAPI app; ``ecoserve
serve`` runs it with uvicorn. Files: ``app`` (routes), ``schemas`` (request
bodies, OpenAPI), ``relay`` (streaming and client disconnects), ``errors``
(OpenAI error shape), ``metrics`` (Prometheus), ``docs`` (``/docs``, its Swagger UI
vendored in ``static/swagger-ui/``).
"""

from ecoserve.server.app import create_app

__all__ = ["create_app"]
