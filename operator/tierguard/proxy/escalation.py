"""The escalation loop: call the cheapest tier, judge its answer, escalate until one is accepted.

One loop for streamed and non-streamed requests; the :class:`~tierguard.proxy.delivery.Delivery`
decides how each call is made and how the accepted answer reaches the client. The decisions are
:mod:`tierguard.judging`'s (the pure rules ``replay`` shares); the only I/O here besides the
delivery is the self-verification call of ``confidence.method: self_eval``.

The last tier always answers: it is marked as the answering tier before it is called, so a
stream can start at its first chunk; a failure before that first chunk takes the mark back and
the client gets an OpenAI-style error.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import judging
from ..cascade import Judgement, acceptance_impossible
from ..policy import CascadeSpec
from .delivery import Delivery, GiveUp, Reply, failure_response
from .outcome import Attempt, Outcome
from .runtime import RevisionRuntime
from .upstream import TierClient, TierFailure


def tiers_to_try(rev: RevisionRuntime) -> range:
    n = len(rev.clients)
    return range(n - 1, n) if rev.capable_only else range(n)


async def escalate(outcome: Outcome, body: dict[str, Any], delivery: Delivery) -> web.StreamResponse:
    """Answer ``body`` with ``outcome.revision``'s cascade; ``outcome`` records every step."""
    rev = outcome.revision
    spec = rev.revision.cascade
    logprobs = judging.wants_logprobs(spec) or bool(body.get("logprobs"))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    for i in tiers_to_try(rev):
        client = rev.clients[i]
        attempt = Attempt(client.tier.name)
        outcome.attempts.append(attempt)
        last = judging.is_last(spec, i)
        if last:
            outcome.answered = i
            attempt.judgement = judging.judge_answer(spec, i, None, capable_only=rev.capable_only)
        try:
            reply = await delivery.call(
                client, last=last, logprobs=logprobs, give_up=None if last else _give_up(spec, i, max_tokens)
            )
        except TierFailure as err:
            outcome.answered = None
            attempt.failed(err)
            attempt.latency_s = err.latency_s
            attempt.judgement = judging.failed_call(spec, i)
            if last or err.kind == "client_error":
                outcome.failure = err
                return failure_response(err, outcome)
            continue
        if reply.broken is not None:  # the last tier failed half-way through its stream
            attempt.failed(reply.broken)
            attempt.latency_s = reply.latency_s
            outcome.failure = reply.broken
            assert delivery.response is not None
            return delivery.response
        attempt.used(client.tier, reply.tokens_in, reply.tokens_out, reply.latency_s)
        if reply.aborted:
            attempt.streamed_tokens = len(reply.logprobs)
            attempt.judgement = judging.early_abort(spec, i, reply.logprobs)
            continue
        attempt.judgement = await judge_reply(rev, i, client, body, reply, attempt)
        if attempt.judgement.accepted:
            outcome.answered = i
            response = await delivery.send(reply)
            outcome.answer = reply.text
            return response
    raise AssertionError("the last tier always answers")  # pragma: no cover


def _give_up(spec: CascadeSpec, tier: int, max_tokens: int | None) -> GiveUp:
    return lambda seen: acceptance_impossible(spec, tier, seen, max_tokens)


async def judge_reply(
    rev: RevisionRuntime, i: int, client: TierClient, body: dict[str, Any], reply: Reply, attempt: Attempt
) -> Judgement:
    """Judge tier ``i``'s reply: from its logprobs, or by asking the tier (``self_eval``)."""
    spec = rev.revision.cascade
    raw: float | None = None
    if reply.has_answer:
        if judging.wants_logprobs(spec):
            raw = judging.logprob_confidence(spec, reply.logprobs)
        elif judging.asks_self_eval(spec, i):
            question = judging.self_eval_request(body, reply.text, spec.confidence.self_eval_prompt)
            try:
                verdict = await client.complete(question, logprobs=True)
            except TierFailure as err:
                attempt.failed(err)
                attempt.error = f"self_eval: {err}"
                return judging.failed_call(spec, i)
            attempt.verified(client.tier, verdict.tokens_in, verdict.tokens_out)
            raw = judging.p_yes(verdict.body)
    return judging.judge_answer(spec, i, raw, capable_only=rev.capable_only)
