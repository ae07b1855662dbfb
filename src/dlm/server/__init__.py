"""dlm's OpenAI-compatible server (``dlm serve``): FastAPI routes over :mod:`dlm.engine`, SSE
streaming with a canvas extension, Prometheus metrics and a web page that draws the denoising.

FastAPI is imported only with :func:`create_app` (every ``dlm`` command builds the ``serve`` parser)."""

MAX_BODY_BYTES = 1 << 20  # the largest request body `dlm serve` reads by default (--max-body-bytes)


def __getattr__(name: str):
    if name == "create_app":
        from dlm.server.app import create_app

        return create_app
    raise AttributeError(f"module 'dlm.server' has no attribute {name!r}")


__all__ = ["MAX_BODY_BYTES", "create_app"]
