"""dlm's inference engine: many requests, any samplers, one model, batched forwards.

:class:`Engine` (the step loop, ``engine.py``), :class:`EngineConfig` and the admission policies
(``scheduler.py``), the batched model runner (``runner.py``) and a request's life (``request.py``).
"""

from dlm.engine.engine import Engine
from dlm.engine.request import Cancelled, Completion, Event, Request
from dlm.engine.scheduler import POLICIES, EngineConfig, EngineFull

__all__ = ["POLICIES", "Cancelled", "Completion", "Engine", "EngineConfig", "EngineFull", "Event", "Request"]
