"""``dlm bench``: several samplers / option sets on one model, side by side in one process.

    specs.py    --run SPEC / --set KEY=VALUE parsing and validation (prepare_sampler), greedy runs
    prompts.py  the prompts: text, the Debian test split as dlm eval builds it, seeded random ids
    measure.py  the timing protocol: cold call, round-robin timed repeats, memory
    report.py   per-run figures, ratios against the baseline, the Markdown table
    cli.py      the command (add_parser, cmd_bench)

See docs/bench.md.
"""
