"""One batch generated to completion, with its decode-only steps timed apart (``bench gpu``)."""

from __future__ import annotations

import time

from skipdecode.benchmarks.engine_args import engine_prompts
from skipdecode.benchmarks.latency import stop_decoding


def generate_batch(
    engine, batch: int, input_len: int, output_len: int, skip, seed: int, deadline
) -> dict | None:
    """Queue ``batch`` random prompts at once and step until all finish.

    Steps that compute prompt tokens (prefill, or prefill chunks mixed with decodes) count
    towards ``elapsed_s`` only; the others are pure decode steps, summed into ``decode_s`` with
    the tokens they sampled. Returns None, with every request aborted, if ``deadline`` (an object
    with ``fits(seconds)``) passes before the batch is done.
    """
    from skipdecode.scheduler import SamplingParams

    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    prompts = engine_prompts(engine, batch, input_len, seed)
    start = time.perf_counter()
    ids = [engine.add_request(prompt, params, skip) for prompt in prompts]
    finals: dict = {}
    decode_s, num_decode_steps, num_decode_tokens, decode_depths, num_preemptions = 0.0, 0, 0, 0, 0
    while engine.has_unfinished_requests():
        if not deadline.fits(0.0):
            stop_decoding(engine)
            return None
        outputs, stats = engine.step_with_stats()
        finals.update((o.request_id, o) for o in outputs if o.finished)
        if stats is None:
            continue
        num_preemptions += stats.num_preemptions
        if stats.num_prompt_tokens == 0:
            decode_s += stats.step_seconds
            num_decode_steps += 1
            num_decode_tokens += stats.num_generation_tokens
            decode_depths += stats.num_layers_computed
    return {
        "outputs": [finals[i] for i in ids],
        "elapsed_s": time.perf_counter() - start,
        "decode_s": decode_s,
        "num_decode_steps": num_decode_steps,
        "num_decode_tokens": num_decode_tokens,
        "decode_mean_depth": decode_depths / num_decode_tokens if num_decode_tokens else None,
        "num_preemptions": num_preemptions,
    }
