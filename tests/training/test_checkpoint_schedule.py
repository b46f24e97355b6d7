"""skip_schedule.json: the engine serves a checkpoint's schedule by default; bad files fail."""

from __future__ import annotations

import json

import pytest
from tiny_models import NUM_LAYERS

from skipdecode import LLM, SamplingParams, SkipConfig
from skipdecode.checkpoint_schedule import (
    SCHEDULE_FILE,
    family_to_dict,
    read_skip_schedule,
    write_skip_schedule,
)
from skipdecode.scheduler import PresetFamily

TRAINED = SkipConfig(warmup_layers=2, max_depth=6, min_depth=3, decay_tokens=4)


def greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def test_engine_uses_the_checkpoint_schedule_by_default(tiny_llama_copy):
    write_skip_schedule(tiny_llama_copy, TRAINED, [SkipConfig.for_speedup(1.0), TRAINED])
    schedule = TRAINED.resolve(NUM_LAYERS)
    llm = LLM(str(tiny_llama_copy), dtype="float32", num_kv_blocks=64, block_size=4)
    out = llm.generate([1, 2, 3], greedy(8))[0]
    assert out.depths == [schedule.depth(g) for g in range(8)] == [6, 5, 4, 4, 3, 3, 3, 3]
    # A request's own setting wins over the checkpoint's default...
    full = llm.generate([1, 2, 3], greedy(8), skip=SkipConfig.for_speedup(1.0))[0]
    assert full.depths == [NUM_LAYERS] * 8
    # ...and so does an engine-level default given explicitly.
    explicit = LLM(str(tiny_llama_copy), dtype="float32", skip=SkipConfig(max_depth=5))
    assert explicit.generate([1, 2, 3], greedy(4))[0].depths == [5] * 4


def test_speedup_presets_take_the_warmup_and_decay_the_checkpoint_trained_with(tiny_llama_copy):
    from skipdecode.server.engine_client import _preset_knobs

    trained = [SkipConfig.for_speedup(2.0, decay_tokens=6, warmup_layers=2)]
    write_skip_schedule(tiny_llama_copy, SkipConfig.for_speedup(1.0), trained)
    llm = LLM(str(tiny_llama_copy), dtype="float32", num_kv_blocks=64, block_size=4)
    family = llm.engine.preset_family
    assert (family.warmup_layers, family.decay_tokens) == (2, 6)
    ours = trained[0].resolve(NUM_LAYERS)
    generic = SkipConfig.for_speedup(2.0).resolve(NUM_LAYERS)  # what other models get
    assert (ours.warmup_layers, ours.decay_tokens) == (2, 6)
    assert (generic.warmup_layers, generic.decay_tokens) == (1, 32)
    out = llm.generate([1, 2, 3], greedy(8), skip=SkipConfig.for_speedup(2.0))[0]
    assert out.depths == ours.depths(8)
    # The server turns {"speedup": 2} into the same knobs; a knob the request names still wins.
    knobs = _preset_knobs(NUM_LAYERS, SkipConfig(speedup=2.0), family)
    assert knobs.resolve(NUM_LAYERS) == ours
    named = _preset_knobs(NUM_LAYERS, SkipConfig(speedup=2.0, warmup_layers=1), family)
    assert (named.warmup_layers, named.decay_tokens) == (1, 6)


def test_a_recorded_preset_family_shapes_the_speedup_presets(tiny_llama_copy):
    from skipdecode.server.engine_client import _preset_knobs

    front = PresetFamily(warmup_layers=1, decay_tokens=4, depth_ratio=3.0, horizon_tokens=8)
    trained = [SkipConfig.for_speedup(2.0, decay_tokens=4, warmup_layers=1)]
    write_skip_schedule(
        tiny_llama_copy, SkipConfig.for_speedup(1.0), trained, preset_family=family_to_dict(front)
    )
    llm = LLM(str(tiny_llama_copy), dtype="float32", num_kv_blocks=64, block_size=4)
    assert llm.engine.preset_family == front
    # On 8 layers the generic shape gives 2x as 4 -> 4; this family's, met at 8 tokens with
    # D_max / D_min near 3, as 6 -> 3 (the rule is checked by brute force in the unit tests).
    assert SkipConfig.for_speedup(2.0, 4, 1).resolve(NUM_LAYERS).depths(5) == [4] * 5
    out = llm.generate([1, 2, 3], greedy(8), skip=SkipConfig.for_speedup(2.0))[0]
    assert out.depths == [6, 5, 4, 4, 3, 3, 3, 3]  # round(6 - 3g/4), halves to even
    knobs = _preset_knobs(NUM_LAYERS, SkipConfig(speedup=2.0), front)
    assert (knobs.max_depth, knobs.min_depth, knobs.decay_tokens) == (6, 3, 4)


def test_without_a_schedule_file_the_default_is_full_depth(tiny_llama_copy):
    assert read_skip_schedule(str(tiny_llama_copy)) is None
    llm = LLM(str(tiny_llama_copy), dtype="float32", num_kv_blocks=64, block_size=4)
    assert llm.generate([1, 2, 3], greedy(4))[0].depths == [NUM_LAYERS] * 4


def _write_raw(directory, text: str) -> str:
    path = directory / SCHEDULE_FILE
    path.write_text(text)
    return str(path)


def _valid_record() -> dict:
    fields = {"warmup_layers": 1, "max_depth": 6, "min_depth": 4, "decay_tokens": 8}
    skip = {**fields, "speedup": None}
    return {
        "format": "skipdecode-skip-schedule",
        "version": 1,
        "default": skip,
        "schedules": [skip],
    }


@pytest.mark.parametrize(
    "case, expected",
    [
        ("not json", "invalid skip schedule file"),
        ("missing field", r"missing fields \['decay_tokens'\]"),
        ("bad value", "min_depth must be <= max_depth"),
        ("no default", "needs 'default' and 'schedules'"),
        ("too deep for the model", "max_depth/min_depth"),
        ("family field missing", "preset_family: expected an object with exactly the fields"),
        ("bad family value", "PresetFamily.depth_ratio must be"),
    ],
)
def test_bad_schedule_files_fail_naming_the_file(tiny_llama_copy, case, expected):
    record = _valid_record()
    if case == "missing field":
        del record["default"]["decay_tokens"]
    elif case == "bad value":
        record["default"].update(max_depth=4, min_depth=6)
    elif case == "no default":
        del record["default"]
    elif case == "too deep for the model":
        record["default"].update(max_depth=20, min_depth=10)
    elif case == "family field missing":
        record["preset_family"] = {"warmup_layers": 1, "decay_tokens": 8, "depth_ratio": 2.0}
    elif case == "bad family value":
        family = {"warmup_layers": 1, "decay_tokens": 8, "depth_ratio": 0.2}
        record["preset_family"] = {**family, "horizon_tokens": None}
    text = "{ not json" if case == "not json" else json.dumps(record)
    path = _write_raw(tiny_llama_copy, text)
    with pytest.raises(ValueError, match=expected) as info:
        LLM(str(tiny_llama_copy), dtype="float32", num_kv_blocks=64)
    assert path in str(info.value)


def test_written_file_round_trips(tmp_path):
    write_skip_schedule(tmp_path, TRAINED, [TRAINED], data={"val_percent": 15})
    assert read_skip_schedule(str(tmp_path), NUM_LAYERS) == TRAINED
    assert json.loads((tmp_path / SCHEDULE_FILE).read_text())["data"] == {"val_percent": 15}
