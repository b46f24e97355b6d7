"""Run `skipdecode train` or `skipdecode eval` with explicit schedules in place of presets.

The CLI takes target speedups; this wrapper maps chosen targets to explicit schedules before
handing over to it, for shapes no preset family yields. Training records the schedules it ran
(`trained_for` in skip_schedule.json) and evaluation each row's schedule. From the repository
root:

    SHAPES='{"2": [24, 12, 12, 3], "3": [18, 7, 12, 3]}' \
      python docs/results/e2e-name-shape/run_explicit.py train ... --speedups 2,3
    SHAPES='{"3.01": [12, 8, 24, 3], "3.05": [19, 6, 16, 3]}' \
      python docs/results/e2e-name-shape/run_explicit.py eval e2e ... --speedups 3.01,3.05

Each SHAPES value is [max_depth, min_depth, decay_tokens, warmup_layers], for a 30-layer model
(other layer counts keep the presets).
"""

import json
import os
import sys

import skipdecode.scheduler.skip as skip
from skipdecode.cli import main

SHAPES = json.loads(os.environ["SHAPES"])
PRESET = skip.preset_schedule


def explicit_or_preset(num_layers, speedup, *args):
    shape = SHAPES.get(f"{speedup:g}")
    if shape is None or num_layers != 30:
        return PRESET(num_layers, speedup, *args)
    max_depth, min_depth, decay, warmup = shape
    return skip.DepthSchedule(num_layers, warmup, max_depth, min_depth, decay)


skip.preset_schedule = explicit_or_preset
sys.exit(main(sys.argv[1:]))
