"""The parts of ``benchmarks/isd.py`` (the I-DLM benchmark): the tasks' examples (:mod:`.tasks`), the
decoding rows run and summarised (:mod:`.rows`), the forward micro-benchmark (:mod:`.forward_micro`),
the command line (:mod:`.arguments`) and the result files (:mod:`.results`)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
