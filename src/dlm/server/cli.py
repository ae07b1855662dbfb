"""``dlm serve``: the OpenAI-compatible server on uvicorn (one engine), or on Ray Serve (``--replicas``).

    dlm serve                                   # the embedded default model on 127.0.0.1:8000
    dlm serve --model tiny-mdm --port 8001 --policy continuous
    dlm serve --replicas 2                      # two engines behind one endpoint (Ray Serve)
"""

from __future__ import annotations

import argparse
import socket
import sys

from dlm.errors import DLMError


def _engine_config(args):
    from dlm.engine import EngineConfig

    config = EngineConfig(policy=args.policy, max_batch=args.max_batch, token_budget=args.token_budget,
                          max_waiting=args.max_waiting, max_absorb=args.max_absorb)
    config.validate()
    return config


def check_address(host: str, port: int) -> None:
    """Fail early, in one line, when the address cannot be bound (in use, not local, no permission)."""
    if not 0 <= port <= 65535:
        raise DLMError(f"--port must be in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise DLMError(f"--host {host!r} cannot be resolved: {e.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise DLMError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from dlm.models.default import DEFAULT_MODEL

    config = _engine_config(args)
    if args.replicas < 1:
        raise DLMError(f"--replicas must be >= 1, got {args.replicas}")
    if args.max_body_bytes < 1:
        raise DLMError(f"--max-body-bytes must be >= 1, got {args.max_body_bytes}")
    check_address(args.host, args.port)
    name = args.model or DEFAULT_MODEL
    if args.replicas > 1:
        from dlm.server.replicas import serve_replicas

        return serve_replicas(args.model, name, args.replicas, args.host, args.port, config, device=args.device,
                              dtype=args.dtype, max_body_bytes=args.max_body_bytes,
                              gpus_per_replica=args.gpus_per_replica)
    import uvicorn

    import dlm
    from dlm.server.app import create_app

    model = dlm.load(args.model, device=args.device, dtype=args.dtype)
    app = create_app(model, name, config, max_body_bytes=args.max_body_bytes)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):  # Ctrl-C / SIGTERM: open streams end now (their requests are
            app.state.engine.cancel_all()   # cancelled), so the graceful shutdown does not wait them out
            super().handle_exit(sig, frame)
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                   timeout_graceful_shutdown=5))
    print(f"dlm: serving {name} at http://{args.host}:{args.port} ({config.policy} batching, "
          f"up to {config.max_batch} requests / {config.token_budget} tokens)", file=sys.stderr, flush=True)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on: a clean stop, not an interruption
        if not server.should_exit:
            raise
    return 0


def add_parser(sub) -> None:
    from dlm.engine import POLICIES, EngineConfig
    from dlm.models.default import DEFAULT_MODEL
    from dlm.server import MAX_BODY_BYTES

    d = EngineConfig()
    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (with a web page at /)",
                       description="Serve a model over HTTP: /v1/completions, /v1/chat/completions (JSON or SSE "
                                   "streaming, diffusion options in the extra field 'dlm'), /v1/models, /health, "
                                   "/metrics (Prometheus) and a web page at / that draws the canvas as it denoises.")
    s.add_argument("--model", default=None, help=f"checkpoint directory or shipped model name (default: {DEFAULT_MODEL})")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    s.add_argument("--policy", choices=POLICIES, default=d.policy,
                   help=f"batching policy (default {d.policy}; serial = one request at a time)")
    s.add_argument("--max-batch", type=int, default=d.max_batch, help=f"requests running at once (default {d.max_batch})")
    s.add_argument("--token-budget", type=int, default=d.token_budget,
                   help=f"canvas tokens (prompt + max_tokens) of the running requests (default {d.token_budget})")
    s.add_argument("--max-waiting", type=int, default=d.max_waiting,
                   help=f"queued requests before new ones get 429 (default {d.max_waiting})")
    s.add_argument("--max-absorb", type=int, default=d.max_absorb,
                   help=f"stationary: waiting requests absorbed per step (default {d.max_absorb})")
    s.add_argument("--max-body-bytes", type=int, default=MAX_BODY_BYTES,
                   help=f"largest request body in bytes (default {MAX_BODY_BYTES})")
    s.add_argument("--replicas", type=int, default=1, help="engines behind one endpoint, on Ray Serve (default 1)")
    s.add_argument("--gpus-per-replica", type=float, default=0.0,
                   help="with --replicas: GPUs Ray reserves for each replica (1: one GPU each; needs --device cuda)")
    s.add_argument("--device", default="cpu", help="torch device (default cpu)")
    s.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: float32 on CPU)")
    s.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (default warning)")
    s.set_defaults(func=cmd_serve)
