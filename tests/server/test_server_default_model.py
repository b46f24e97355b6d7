"""The real default model (SmolLM2-135M-Instruct, no --model): chat makes sense, streamed text
equals the non-streamed text."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
# "Answer in one sentence." gives the greedy answer a clear margin (>= 1.4 nats at every one of its
# first tokens, fp32 and bf16). The bare question's first token is a near-tie (0.08 nats in fp32,
# an exact tie of bf16 logits), so any change of bf16 rounding order could flip its answer.
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


@pytest.fixture(scope="module")
def default_server(default_model_server):
    return default_model_server


class TestDefaultModel:
    def test_serves_under_its_default_name(self, default_server):
        models = default_server.openai_client().models.list()
        assert [m.id for m in models.data] == ["SmolLM2-135M-Instruct"]

    def test_chat_answers_sensibly(self, default_server):
        client = default_server.openai_client()
        out = client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=QUESTION, max_tokens=24, temperature=0
        )
        text = out.choices[0].message.content
        assert "Paris" in text, text
        assert out.usage.theoretical_speedup == 1.0  # no default schedule: full depth

    @pytest.mark.parametrize("sampling", [{"temperature": 0}, {"temperature": 0.8, "seed": 1}])
    def test_stream_equals_non_stream(self, default_server, sampling):
        client = default_server.openai_client()
        kwargs = dict(model="SmolLM2-135M-Instruct", messages=QUESTION, max_tokens=20, **sampling)
        whole = client.chat.completions.create(**kwargs).choices[0]
        streamed, reason = "", None
        for chunk in client.chat.completions.create(stream=True, **kwargs):
            for choice in chunk.choices:
                streamed += choice.delta.content or ""
                reason = choice.finish_reason or reason
        assert whole.message.content.strip()
        assert (streamed, reason) == (whole.message.content, whole.finish_reason)
