"""Turning a prompt and its settings into a validated Request, without touching engine state.

The engine builds its requests with it; so does the API server process when the engine runs in a
process of its own (server/core_client.py), so that a bad request is refused before it is sent.
"""

from __future__ import annotations

import itertools

from skipdecode.kv_cache import KVCacheManager
from skipdecode.scheduler import (
    PresetFamily,
    Request,
    SamplingParams,
    Scheduler,
    SchedulerConfig,
    SkipConfig,
)
from skipdecode.structured_output import GrammarCompiler


class RequestFactory:
    """Tokenizes, resolves the skip schedule and checks that a request can ever run.

    ``scheduler`` is only asked ``check_request`` (context length and KV capacity).
    """

    def __init__(
        self,
        tokenizer,
        vocab_size: int,
        num_layers: int,
        default_skip: SkipConfig | None,
        preset_family: PresetFamily,
        scheduler: Scheduler,
        eos_token_ids: frozenset[int],
        grammars: GrammarCompiler,
    ) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.num_layers = num_layers
        self.default_skip = default_skip
        self.preset_family = preset_family
        self.check_scheduler = scheduler
        self.eos_token_ids = eos_token_ids
        self.grammars = grammars
        self._ids = itertools.count()

    @classmethod
    def detached(
        cls,
        tokenizer,
        vocab_size: int,
        logits_size: int,
        num_layers: int,
        default_skip: SkipConfig | None,
        preset_family: PresetFamily,
        scheduler_config: SchedulerConfig,
        kv_geometry: tuple[int, int],
        eos_token_ids: frozenset[int],
    ) -> RequestFactory:
        """A factory with no engine behind it: its scheduler holds an empty cache of the
        engine's geometry ``(num_blocks, block_size)``, used only to check requests."""
        num_blocks, block_size = kv_geometry
        scheduler = Scheduler(scheduler_config, KVCacheManager(num_blocks, block_size, num_layers))
        grammars = GrammarCompiler(tokenizer, logits_size)
        return cls(
            tokenizer, vocab_size, num_layers, default_skip, preset_family, scheduler,
            eos_token_ids, grammars,
        )  # fmt: skip

    def resolve_skip(self, skip: SkipConfig | None):
        """The depth schedule for a request's skip setting (None: the engine's default)."""
        skip = skip if skip is not None else self.default_skip
        return (skip or SkipConfig()).resolve(self.num_layers, self.preset_family)

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this model has no tokenizer: pass prompt token ids")
            return list(self.tokenizer(prompt, add_special_tokens=True).input_ids)
        vocab = self.vocab_size
        if not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        return list(prompt)

    def make_request(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        skip: SkipConfig | None = None,
        request_id: str | None = None,
        with_grammar: bool = True,
    ) -> Request:
        """Tokenize and validate; raises ValueError naming the problem if it can never run.

        Touches no engine state, so any thread may call it. ``with_grammar=False`` leaves the
        request's grammar unbuilt (a process that only checks requests has no use for it).
        """
        prompt_ids = self.tokenize(prompt)
        if not prompt_ids:
            raise ValueError("prompt must not be empty")
        request = Request(
            request_id=request_id if request_id is not None else f"req-{next(self._ids)}",
            prompt_token_ids=prompt_ids,
            sampling_params=params or SamplingParams(),
            schedule=self.resolve_skip(skip),
            eos_token_ids=self.eos_token_ids,
        )
        self.check_scheduler.check_request(request)
        constraint = request.sampling_params.structured_output
        if constraint is not None and with_grammar:
            request.grammar = self.grammars.grammar(constraint)
        return request
