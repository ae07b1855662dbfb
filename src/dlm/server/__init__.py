"""dlm's OpenAI-compatible server (``dlm serve``): FastAPI routes over :mod:`dlm.engine`, SSE
streaming with a canvas extension, Prometheus metrics and a web page that draws the denoising."""

from dlm.server.app import create_app

__all__ = ["create_app"]
