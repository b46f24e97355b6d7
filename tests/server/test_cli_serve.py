"""``skipdecode serve`` flags become validated configs (no server started here)."""

from __future__ import annotations

import pytest

from skipdecode import cli, cli_args
from skipdecode.scheduler import SkipConfig
from skipdecode.server.config import ServerConfig


def parse(*argv: str):
    return cli.build_parser().parse_args(["serve", *argv])


def test_serve_flags_build_both_configs(monkeypatch):
    monkeypatch.delenv(cli_args.API_KEY_ENV, raising=False)
    args = parse(
        "--model", "/models/x", "--served-model-name", "a", "b", "--host", "0.0.0.0",
        "--port", "9000", "--dtype", "float32", "--max-model-len", "256", "--max-num-seqs", "4",
        "--max-num-batched-tokens", "512", "--kv-cache-memory", "0.5", "--block-size", "8",
        "--speedup", "2", "--max-queue-len", "3", "--shutdown-timeout", "2.5",
    )  # fmt: skip
    server = cli_args.server_config(args)
    assert server == ServerConfig(
        served_model_names=("a", "b"),
        host="0.0.0.0",
        port=9000,
        api_key=None,
        max_queue_len=3,
        shutdown_timeout=2.5,
        engine_process=True,  # the default: the engine steps in a process of its own
    )
    engine = cli_args.engine_config(args)
    assert (engine.model.model, engine.model.dtype, engine.model.max_model_len) == (
        "/models/x",
        "float32",
        256,
    )
    assert (engine.scheduler.max_num_seqs, engine.scheduler.max_num_batched_tokens) == (4, 512)
    assert (engine.cache.kv_cache_memory_gib, engine.cache.block_size) == (0.5, 8)
    assert engine.skip == SkipConfig(speedup=2.0)


def test_defaults_and_the_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv(cli_args.API_KEY_ENV, "from-env")
    server = cli_args.server_config(parse())
    assert server.served_model_names == (cli_args.DEFAULT_SERVED_NAME,)
    assert (server.host, server.port, server.shutdown_timeout) == ("127.0.0.1", 8000, 10.0)
    assert server.api_key == "from-env"
    assert cli_args.server_config(parse("--api-key", "flag")).api_key == "flag"
    assert cli_args.server_config(parse("--model", "/m")).served_model_names == ("/m",)


@pytest.mark.parametrize(
    "argv",
    [("--port", "70000"), ("--max-queue-len", "0"), ("--shutdown-timeout", "-1")],
)
def test_invalid_server_flags_fail_early(argv, monkeypatch):
    monkeypatch.delenv(cli_args.API_KEY_ENV, raising=False)
    with pytest.raises(ValueError, match="ServerConfig"):
        cli_args.server_config(parse(*argv))


def test_generate_still_parses():
    args = cli.build_parser().parse_args(["generate", "hello", "--max-tokens", "3"])
    assert args.func is cli.run_generate and args.max_tokens == 3
