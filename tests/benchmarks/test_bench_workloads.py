"""``bench serve`` workloads: ShareGPT sampling, rate sweeps, goodput, and a run end to end."""

from __future__ import annotations

import argparse
import json
import math
import random

import pytest

from skipdecode.benchmarks.serve_client import RequestResult
from skipdecode.benchmarks.workloads import (
    LengthFilter,
    first_answered_turn,
    goodput,
    parse_rates,
    sample_sharegpt,
    sample_stats,
)
from skipdecode.cli import main
from skipdecode.datasets import read_conversations

# Hand-made ShareGPT records: (id, turns as (speaker, number of words)). Each word is one token
# for the whitespace tokenizer below; word k of record "a" is "a<k>", so a prompt names its record.
RECORDS = [
    ("a", [("human", 5), ("gpt", 6)]),  # 5 + 6: kept
    ("b", [("human", 3), ("gpt", 6)]),  # prompt 3 < 4: too short
    ("c", [("human", 5), ("gpt", 3)]),  # output 3 < 4: too short
    ("d", [("human", 11), ("gpt", 4)]),  # prompt 11 > 10: too long
    ("e", [("human", 8), ("gpt", 9)]),  # 8 + 9 = 17 > 16: too long
    ("f", [("human", 10), ("gpt", 6)]),  # 10 + 6 = 16, both limits met exactly: kept
    ("g", [("human", 4), ("gpt", 4)]),  # the shortest allowed: kept
    ("h", [("gpt", 2), ("human", 6), ("gpt", 5)]),  # opens with gpt; the pair is 6 + 5: kept
    ("i", [("human", 5)]),  # one turn: the reader drops it
    ("j", [("system", 3), ("human", 7), ("gpt", 7)]),  # 7 + 7: kept
]
LIMITS = LengthFilter(min_len=4, max_prompt_len=10, max_total_len=16)
PAIRS = ["a", "b", "c", "d", "e", "f", "g", "h", "j"]  # records with a human turn answered
KEPT = {"a": (5, 6), "f": (10, 6), "g": (4, 4), "h": (6, 5), "j": (7, 7)}


def words(record_id: str, count: int, start: int = 0) -> str:
    return " ".join(f"{record_id}{k}" for k in range(start, start + count))


@pytest.fixture
def sharegpt_file(tmp_path):
    records = []
    for record_id, turns in RECORDS:
        turns_json, start = [], 0
        for speaker, count in turns:
            turns_json.append({"from": speaker, "value": words(record_id, count, start)})
            start += count
        records.append({"id": record_id, "conversations": turns_json})
    records.append({"id": "x", "text": "not a conversation"})
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records))
    return path


def sample(path, num_requests: int, seed: int = 0, fixed_output_len: int | None = None):
    conversations, _ = read_conversations(str(path))
    return sample_sharegpt(conversations, str.split, num_requests, seed, LIMITS, fixed_output_len)


def record_of(request) -> str:
    return request.prompt[0]


def test_reader_takes_the_hand_made_file(sharegpt_file):
    conversations, report = read_conversations(str(sharegpt_file))
    assert [c.id for c in conversations] == PAIRS
    assert (report.num_kept, report.num_dropped) == (9, 2)  # "i" (one turn) and "x"


def test_sharegpt_filter_keeps_exactly_the_pairs_within_the_limits(sharegpt_file):
    requests, counts = sample(sharegpt_file, num_requests=5)
    assert {record_of(r): (r.prompt_len, r.output_len) for r in requests} == KEPT
    assert requests[[record_of(r) for r in requests].index("h")].prompt == words("h", 6, start=2)
    assert counts["num_pairs"] == 9 and counts["num_pairs_passed"] == 5
    rejected = counts["num_pairs_too_short"] + counts["num_pairs_too_long"]
    assert counts["num_pairs_examined"] == 5 + rejected
    # Prompt lengths 5, 10, 4, 6, 7; output lengths 6, 6, 4, 5, 7.
    assert sample_stats(requests) == {
        "num_requests": 5,
        "prompt_len_mean": 32 / 5,
        "prompt_len_median": 6,
        "output_len_mean": 28 / 5,
        "output_len_median": 6,
    }
    with pytest.raises(ValueError, match="only 5 of 9 prompt/answer pairs pass"):
        sample(sharegpt_file, num_requests=6)


def test_sharegpt_sample_follows_the_seeded_shuffle(sharegpt_file):
    # vLLM's rule: shuffle the pairs with the seed, then keep those that pass, in that order.
    for seed in (0, 1, 7):
        order = PAIRS.copy()
        random.Random(seed).shuffle(order)
        expected = [pair for pair in order if pair in KEPT]
        requests, _ = sample(sharegpt_file, num_requests=5, seed=seed)
        assert [record_of(r) for r in requests] == expected
        again, _ = sample(sharegpt_file, num_requests=5, seed=seed)
        assert again == requests
        fewer, counts = sample(sharegpt_file, num_requests=2, seed=seed)
        assert fewer == requests[:2]
        assert counts["num_pairs_examined"] == order.index(expected[1]) + 1
    orders = {tuple(record_of(r) for r in sample(sharegpt_file, 5, seed=s)[0]) for s in range(6)}
    assert len(orders) > 1


def test_sharegpt_fixed_output_len_replaces_the_answer_length(sharegpt_file):
    # Output 4 everywhere: "c" (5 + 4) and "e" (8 + 4) now pass; "b" and "d" still do not.
    requests, counts = sample(sharegpt_file, num_requests=7, fixed_output_len=4)
    assert {record_of(r) for r in requests} == {"a", "c", "e", "f", "g", "h", "j"}
    assert {r.output_len for r in requests} == {4}
    assert (counts["num_pairs_too_short"], counts["num_pairs_too_long"]) == (1, 1)


def test_default_limits_are_vllms():
    limits = LengthFilter()
    assert limits.reject(3, 100) == limits.reject(100, 3) == "too_short"
    assert limits.reject(4, 4) is None and limits.reject(1024, 1024) is None
    assert limits.reject(1025, 4) == limits.reject(1000, 1049) == "too_long"


def result(ttft: float | None, itls: list[float], ok: bool = True) -> RequestResult:
    return RequestResult(ok=ok, ttft=ttft, itls=itls, e2e=1.0, error=None if ok else "HTTP 500")


def test_goodput_on_hand_made_latencies():
    results = [
        result(0.25, [0.02, 0.04]),  # TTFT 250 ms, mean ITL 30 ms
        result(0.30, [0.01]),  # TTFT 300 ms, mean ITL 10 ms
        result(0.05, [0.05, 0.07]),  # TTFT 50 ms, mean ITL 60 ms
        result(None, [], ok=False),  # failed
        result(0.15, []),  # one chunk: no gap, mean ITL 0
    ]
    # Both SLOs, TTFT <= 250 (the first request sits on the bound) and ITL <= 50: 1st and 5th.
    both = goodput(results, 2.0, slo_ttft_ms=250, slo_itl_ms=50)
    assert both == {
        "slo_ttft_ms": 250,
        "slo_itl_ms": 50,
        "good_requests": 2,
        "good_fraction": 2 / 5,
        "goodput_requests_per_s": 2 / 2.0,
    }
    # TTFT only: 1st, 3rd and 5th. ITL only: 1st, 2nd and 5th (the failed one never counts).
    ttft_only = goodput(results, 2.0, slo_ttft_ms=250, slo_itl_ms=None)
    assert ttft_only["good_requests"] == 3 and ttft_only["goodput_requests_per_s"] == 1.5
    assert goodput(results, 4.0, slo_ttft_ms=None, slo_itl_ms=50)["goodput_requests_per_s"] == 0.75
    assert goodput(results, 2.0, slo_ttft_ms=249, slo_itl_ms=None)["good_requests"] == 2
    none = goodput(results, 2.0, None, None)
    assert none["good_requests"] is none["goodput_requests_per_s"] is none["good_fraction"] is None


def test_rate_sweep_parsing():
    assert parse_rates("1,2,4,inf") == [1.0, 2.0, 4.0, math.inf]
    assert parse_rates(" 0.5 , INF") == [0.5, math.inf]
    for bad in ("0", "-1", "abc", "nan", "1,,2", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="rates > 0"):
            parse_rates(bad)


@pytest.mark.parametrize("value", ["fast", "2,0"])
def test_bad_rate_is_an_error_naming_the_flag(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "serve", "--request-rate", value])
    assert exit_info.value.code == 2
    assert "argument --request-rate: expected comma-separated rates" in capsys.readouterr().err


def test_bad_slo_is_an_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "serve", "--prompt-kind", "words", "--slo-itl", "0"])
    assert "--slo-itl must be > 0" in capsys.readouterr().err


def run_bench(url: str, out, *extra: str) -> tuple[int, dict]:
    code = main(["bench", "serve", "--base-url", url, "--output-json", str(out), *extra])
    return code, json.loads(out.read_text())


def test_sharegpt_rate_sweep_end_to_end(fake_server, tmp_path, tiny_llama_dir):
    url, fake = fake_server()
    code, payload = run_bench(
        url, tmp_path / "serve.json",
        "--dataset", "sharegpt", "--model", str(tiny_llama_dir), "--num-prompts", "3",
        "--sharegpt-output-len", "5", "--request-rate", "50,inf", "--max-concurrency", "2",
        "--slo-ttft", "10000", "--slo-itl", "10000", "--num-warmup", "1", "--timeout", "60",
    )  # fmt: skip
    assert code == 0
    data = payload["dataset"]
    assert data["name"] == "sharegpt" and data["path"].endswith(".json")
    assert data["num_conversations_read"] == (
        data["num_conversations_kept"] + data["num_conversations_dropped"]
    )
    assert data["num_conversations_kept"] > 0 and data["server_max_model_len"] is None
    assert data["num_pairs_passed"] == 2 * 3 + 1  # two runs and the warm-up
    assert data["num_pairs_examined"] >= data["num_pairs_passed"]
    assert data["num_requests"] == 6 and data["output_len_mean"] == data["output_len_median"] == 5
    assert data["prompt_len_mean"] >= 4 and data["length_filter"]["max_total_len"] == 2048
    assert payload["args"]["request_rate"] == [50.0, "inf"]
    assert [r["label"] for r in payload["results"]] == ["rate=50/s", "rate=inf/s"]
    assert [r["request_rate"] for r in payload["results"]] == [50.0, "inf"]
    for row in payload["results"]:
        assert row["completed"] == 3 and row["concurrency"] == 2
        assert row["num_output_tokens"] == row["num_output_tokens_expected"] == 3 * 5
        assert (row["slo_ttft_ms"], row["slo_itl_ms"]) == (10000, 10000)
        assert row["goodput_requests_per_s"] == pytest.approx(
            row["good_requests"] / row["duration_s"]
        )
        assert row["good_fraction"] == row["good_requests"] / 3
        for metric in ("ttft_ms", "itl_ms", "e2e_ms"):
            points = [row[f"{metric}_p{p}"] for p in (50, 90, 95, 99)]
            assert points == sorted(points) and points[0] > 0
    measured = [body for body in fake.bodies if body["max_tokens"] == 5]
    assert len(measured) == 6 and all(isinstance(b["prompt"], str) for b in measured)
    assert len({body["prompt"] for body in fake.bodies}) == 7  # every request a prompt of its own


def test_sharegpt_file_within_the_servers_max_model_len(
    fake_server, sharegpt_file, tmp_path, tiny_llama_dir, smollm_tokenizer
):
    # The records whose pair fits 24 tokens with the model's tokenizer (a word is 2-3 tokens).
    conversations, _ = read_conversations(str(sharegpt_file))
    fits = set()
    for conversation in conversations:
        lengths = [len(smollm_tokenizer(t).input_ids) for t in first_answered_turn(conversation)]
        if min(lengths) >= 4 and sum(lengths) <= 24:
            fits.add(conversation.id)
    assert 0 < len(fits) < len(PAIRS)
    url, fake = fake_server(max_model_len=24)
    code, payload = run_bench(
        url, tmp_path / "serve.json",
        "--dataset", "sharegpt", "--dataset-path", str(sharegpt_file),
        "--model", str(tiny_llama_dir), "--num-prompts", str(len(fits)), "--concurrency", "2",
        "--num-warmup", "0", "--timeout", "60",
    )  # fmt: skip
    assert code == 0
    data = payload["dataset"]
    assert data["path"] == str(sharegpt_file) and data["server_max_model_len"] == 24
    assert data["length_filter"]["max_total_len"] == 24
    assert (data["num_conversations_kept"], data["num_conversations_dropped"]) == (9, 2)
    assert data["num_pairs_passed"] == len(fits)
    assert {body["prompt"][0] for body in fake.bodies} == fits  # every pair that fits, no other
