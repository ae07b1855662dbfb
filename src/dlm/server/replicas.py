"""``dlm serve --replicas N``: N engines behind one HTTP endpoint, on Ray Serve.

Each replica is a Ray actor that loads the model itself and builds its own :func:`dlm.server.app.create_app`
app - the model is never pickled from the driver: the deployment is ``serve.ingress`` given a builder
function, which Ray Serve calls inside the replica when the replica starts. Ray Serve then runs the app's
FastAPI lifespan there (uvicorn's ``LifespanOn``), which starts the replica's engine, and runs its shutdown
when the replica stops, which stops the engine. Every route of the single-process server is served as is
(completions and chat, JSON or SSE, ``/v1/models``, ``/health``, ``/metrics``, ``/``); ``/health`` and
``/metrics`` describe the replica that answered. Ray Serve's HTTP proxy listens on ``host:port`` and
routes each request to the less busy of two replicas picked at random ("power of two choices").

Ray starts locally (``ray.init`` with this machine's CPUs, no dashboard, usage stats off) unless
``RAY_ADDRESS`` names a running cluster (``ray start --head`` / ``ray start --address=...``). A replica
reserves the machine's CPUs divided by N (a fraction when N exceeds them) and ``gpus_per_replica``
GPUs; Ray sets ``CUDA_VISIBLE_DEVICES`` per replica, so ``--device cuda`` is the replica's own GPU.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading

from dlm.errors import DLMError
from dlm.server import MAX_BODY_BYTES

APP_NAME = "dlm"
RAY_MISSING = "dlm serve --replicas needs Ray Serve: pip install 'dlm[serve-ray]'"


def build_app(model: str | None, name: str, config, device: str, dtype: str | None, max_body_bytes: int):
    """Inside a replica: load the model and build the server app (its lifespan starts the engine)."""
    import dlm
    from dlm.server.app import create_app

    return create_app(dlm.load(model, device=device, dtype=dtype), name, config, max_body_bytes=max_body_bytes)


def check_model(model: str | None, device: str, dtype: str | None) -> None:
    """Fail in one line, before Ray starts, on a model, device or dtype the replicas could not load (and
    convert a packaged base once here rather than in every replica)."""
    from dlm.models.loading import parse_device, parse_dtype, read_config
    from dlm.models.locate import resolve_model_path

    parse_dtype(dtype, parse_device(device))
    if model is not None:
        read_config(resolve_model_path(model))


def cpus_per_replica(cpus: int, replicas: int) -> float:
    """An equal share of ``cpus``: whole CPUs when there are enough (Ray wants whole numbers above 1),
    else a fraction rounded down to Ray's 4 decimals so that all ``replicas`` fit."""
    if cpus >= replicas:
        return float(cpus // replicas)
    return math.floor(cpus / replicas * 10_000) / 10_000


def make_deployment(model: str | None, name: str, replicas: int, config, device: str, dtype: str | None,
                    max_body_bytes: int, num_cpus: float, num_gpus: float):
    """The Ray Serve deployment (unbound): ``replicas`` copies of the app that :func:`build_app` builds."""
    from ray import serve

    def builder():  # pickled by value (a closure over strings and the EngineConfig), called in each replica
        return build_app(model, name, config, device, dtype, max_body_bytes)

    ingress = serve.ingress(builder)()
    return serve.deployment(
        ingress, name="DLMServer", num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        # let every replica's engine take what it can batch or queue; past that it answers 429 itself
        max_ongoing_requests=config.max_batch + config.max_waiting,
        max_constructor_retry_count=1,  # a model that does not load fails the start, not 20 retries later
        graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=10,
        logging_config={"log_level": "WARNING", "enable_access_log": False},  # as quiet as `dlm serve` on uvicorn
    )


def serve_replicas(model: str | None, name: str, replicas: int, host: str, port: int, config, device: str = "cpu",
                   dtype: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
                   gpus_per_replica: float = 0.0) -> int:
    """Serve ``replicas`` engines of ``model`` at http://host:port until SIGINT / SIGTERM; then shut Ray
    Serve and Ray down and return 0."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise DLMError(RAY_MISSING) from None
    if replicas < 1:
        raise DLMError(f"--replicas must be >= 1, got {replicas}")
    if gpus_per_replica < 0:
        raise DLMError(f"--gpus-per-replica must be >= 0, got {gpus_per_replica}")
    if gpus_per_replica > 0 and str(device).startswith("cpu"):
        raise DLMError("--gpus-per-replica reserves GPUs for the replicas: pass --device cuda too")

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = os.environ.get("RAY_ADDRESS")
    if cluster:  # a running cluster, with its nodes' resources as `ray start` declared them; the model need
        ray.init(address=cluster)  # not be on this machine, only at the same path on the replicas' nodes
        num_cpus = 1.0
    else:
        check_model(model, device, dtype)
        cpus = os.cpu_count() or 1
        ray.init(address="local", num_cpus=cpus, include_dashboard=False)
        num_cpus = cpus_per_replica(cpus, replicas)
        gpus = ray.cluster_resources().get("GPU", 0)
        if gpus_per_replica * replicas > gpus:  # Ray would wait for them forever
            ray.shutdown()
            raise DLMError(f"{replicas} replicas x {gpus_per_replica:g} GPUs need {replicas * gpus_per_replica:g} "
                           f"GPUs; this machine has {gpus:g}")
    stop, started = threading.Event(), threading.Event()

    def on_signal(*_):
        stop.set()
        if not started.is_set():  # still starting: abandon the start (the finally below cleans up)
            raise KeyboardInterrupt
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": host, "port": port},
                    logging_config={"log_level": "WARNING"})
        deployment = make_deployment(model, name, replicas, config, device, dtype, max_body_bytes, num_cpus,
                                     gpus_per_replica)
        try:
            serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as e:  # a replica failed to start: its error is in the message
            raise DLMError(f"the replicas did not start: {e}") from None
        started.set()
        print(f"dlm: serving {name} at http://{host}:{port} on Ray Serve ({replicas} replicas, "
              f"{num_cpus:g} CPU + {gpus_per_replica:g} GPU each; {config.policy} batching, up to "
              f"{config.max_batch} requests / {config.token_budget} tokens per replica)", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        print("dlm: shutting down the replicas", file=sys.stderr, flush=True)
    finally:
        for s, handler in previous.items():  # a second Ctrl-C during the shutdown interrupts it
            signal.signal(s, handler)
        try:  # on a shared cluster remove this application only; Serve itself is the cluster's
            serve.delete(APP_NAME) if cluster else serve.shutdown()
        finally:
            ray.shutdown()
    return 0
