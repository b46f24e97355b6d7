"""The ``skip_schedule.json`` a fine-tuned checkpoint carries (DESIGN.md §6).

A checkpoint trained with skipping records the schedule(s) it was trained for; serving uses the
``default`` one when the caller gives no skip setting. Training writes the file through
:func:`write_skip_schedule` and serving reads it through :func:`read_skip_schedule`, so both sides
agree on one format. Serving must not import ``skipdecode.training``, hence this module lives at
the package root.

Format (version 1)::

    {
      "format": "skipdecode-skip-schedule", "version": 1,
      "default": {SkipConfig fields},          # served when a request brings no skip setting
      "schedules": [{SkipConfig fields}, ...], # every schedule the checkpoint was trained for
      "preset_family": {PresetFamily fields},  # optional: how {"speedup": x} resolves for it
      ...                                      # free-form extras: data split, prompt format
    }

Each SkipConfig object must name all five fields (``warmup_layers``, ``max_depth``,
``min_depth``, ``decay_tokens``, ``speedup``; ``null`` where unused), so a truncated file is an
error instead of silently falling back to defaults; so must ``preset_family`` when present
(``warmup_layers``, ``decay_tokens``, ``depth_ratio``, ``horizon_tokens``). Without it the
family is the warm-up and decay of the first skipping schedule, in the generic shape.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from skipdecode.scheduler import PresetFamily, SkipConfig

SCHEDULE_FILE = "skip_schedule.json"
FORMAT_NAME = "skipdecode-skip-schedule"
FORMAT_VERSION = 1
SKIP_FIELDS = tuple(f.name for f in dataclasses.fields(SkipConfig))


def skip_to_dict(skip: SkipConfig) -> dict[str, Any]:
    """All SkipConfig fields, JSON-ready."""
    return dataclasses.asdict(skip)


def skip_from_dict(fields: object, where: str) -> SkipConfig:
    """A SkipConfig from a dict naming exactly the SkipConfig fields; ValueError says ``where``."""
    if not isinstance(fields, dict):
        raise ValueError(f"{where}: expected an object with fields {', '.join(SKIP_FIELDS)}")
    missing = [name for name in SKIP_FIELDS if name not in fields]
    unknown = sorted(set(fields) - set(SKIP_FIELDS))
    if missing or unknown:
        raise ValueError(f"{where}: missing fields {missing}, unknown fields {unknown}")
    try:
        return SkipConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def load_schedule_record(file: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a schedule file; the whole record, with ``default`` and ``schedules``
    parsed into SkipConfig objects. Any problem is a ValueError that names the file."""
    file = str(file)
    try:
        with open(file, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"invalid skip schedule file {file}: {exc}") from exc
    if not isinstance(record, dict):
        raise ValueError(f"invalid skip schedule file {file}: expected a JSON object")
    if record.get("format") != FORMAT_NAME or record.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"invalid skip schedule file {file}: expected format {FORMAT_NAME!r}"
            f" version {FORMAT_VERSION}"
        )
    if "default" not in record or not isinstance(record.get("schedules"), list):
        raise ValueError(f"invalid skip schedule file {file}: needs 'default' and 'schedules'")
    parsed = dict(record)
    parsed["default"] = skip_from_dict(record["default"], f"skip schedule file {file}: default")
    parsed["schedules"] = [
        skip_from_dict(item, f"skip schedule file {file}: schedules[{i}]")
        for i, item in enumerate(record["schedules"])
    ]
    if "preset_family" in record:
        try:
            parsed["preset_family"] = family_from_dict(record["preset_family"])
        except ValueError as exc:
            raise ValueError(f"invalid skip schedule file {file}: {exc}") from exc
    return parsed


def read_schedule(
    model_path: str | None, num_layers: int | None = None
) -> tuple[SkipConfig | None, PresetFamily | None]:
    """(default schedule, preset family) recorded in a model directory, each None when it has no
    schedule file (or, for the family, the file names no warm-up or decay).

    With ``num_layers`` the default is also resolved for the model, so a schedule that does not
    fit it fails here, naming the file, rather than at the first request.
    """
    if model_path is None or not os.path.isdir(model_path):
        return None, None  # the default model and .gguf files carry no schedule
    file = os.path.join(model_path, SCHEDULE_FILE)
    if not os.path.exists(file):
        return None, None
    record = load_schedule_record(file)
    default, family = record["default"], preset_family(record)
    if num_layers is not None:
        try:
            default.resolve(num_layers, family)
        except ValueError as exc:
            raise ValueError(f"skip schedule file {file}: {exc}") from exc
    return default, family


def read_skip_schedule(model_path: str | None, num_layers: int | None = None) -> SkipConfig | None:
    """The default schedule recorded in a model directory (see :func:`read_schedule`)."""
    return read_schedule(model_path, num_layers)[0]


def read_preset_family(model_path: str | None) -> PresetFamily | None:
    """The preset family recorded in a model directory (see :func:`read_schedule`)."""
    return read_schedule(model_path)[1]


def preset_family(record: dict[str, Any]) -> PresetFamily | None:
    """The preset family of a checkpoint: its ``preset_family`` object when it has one (warm-up,
    decay and shape), else the warm-up and decay of the first schedule it was trained for with
    a speedup above 1, else those its default names; None if none names them."""
    if "preset_family" in record:  # parsed by load_schedule_record
        return record["preset_family"]
    skipping = [s for s in record["schedules"] if s.speedup is not None and s.speedup > 1]
    source = skipping[0] if skipping else record["default"]
    if source.warmup_layers is None and source.decay_tokens is None:
        return None
    generic = PresetFamily()
    return PresetFamily(
        generic.warmup_layers if source.warmup_layers is None else source.warmup_layers,
        generic.decay_tokens if source.decay_tokens is None else source.decay_tokens,
    )


def family_to_dict(family: PresetFamily) -> dict[str, Any]:
    """All PresetFamily fields, JSON-ready."""
    return dataclasses.asdict(family)


def family_from_dict(fields: object) -> PresetFamily:
    """A PresetFamily from a schedule file's ``preset_family`` object (every field named)."""
    names = [f.name for f in dataclasses.fields(PresetFamily)]
    if not isinstance(fields, dict) or sorted(fields) != sorted(names):
        raise ValueError(f"preset_family: expected an object with exactly the fields {names}")
    return PresetFamily(**fields)


def write_skip_schedule(
    directory: str | os.PathLike,
    default: SkipConfig,
    schedules: list[SkipConfig],
    **extra: Any,
) -> Path:
    """Write ``directory/skip_schedule.json`` and read it back (the writer cannot drift from the
    reader). ``extra`` holds JSON-ready fields such as the data split and the prompt format."""
    record = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "default": skip_to_dict(default),
        "schedules": [skip_to_dict(s) for s in schedules],
        **extra,
    }
    path = Path(directory) / SCHEDULE_FILE
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    load_schedule_record(path)
    return path
