"""The escalation loop: call the cheapest tier, judge its answer, escalate until one is accepted.

One loop for streamed and non-streamed requests; the :class:`~tierguard.proxy.delivery.Delivery`
decides how each call is made and how the accepted answer reaches the client. The decisions are
:mod:`tierguard.judging`'s (the pure rules ``replay`` shares); the only I/O here besides the
delivery is the self-verification call of ``confidence.method: self_eval``.

The last tier always answers: it is marked as the answering tier before it is called, so a
stream can start at its first chunk; a failure before that first chunk takes the mark back and
the client gets an OpenAI-style error.

Agent answers: a tool call is checked against the request's ``tools`` and judged by the tier's
``toolCalls`` method (a self-verification call for ``self_eval``); an answer that breaks
``response_format`` escalates (:func:`tierguard.judging.check_answer`). A cheaper tier's stream is
cut as soon as its tool calls decide the outcome (``escalate`` rule, undeclared function). A turn
of a ``sticky`` conversation starts at ``outcome.start``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .. import judging
from ..cascade import Judgement, Reason, acceptance_impossible
from ..policy import CascadeSpec
from ..toolcalls import StreamedToolCalls, unknown_tool, verification_messages
from .delivery import NEVER, Delivery, GiveUp, Reply, StopOnCalls, Stops, failure_response
from .outcome import Attempt, Outcome
from .runtime import RevisionRuntime
from .upstream import TierClient, TierFailure


def tiers_to_try(rev: RevisionRuntime, start: int = 0) -> range:
    n = len(rev.clients)
    return range(n - 1, n) if rev.capable_only else range(min(start, n - 1), n)


async def escalate(outcome: Outcome, body: dict[str, Any], delivery: Delivery) -> web.StreamResponse:
    """Answer ``body`` with ``outcome.revision``'s cascade; ``outcome`` records every step."""
    rev = outcome.revision
    spec = rev.revision.cascade
    logprobs = judging.wants_logprobs(spec) or bool(body.get("logprobs"))
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    for i in tiers_to_try(rev, outcome.start):
        client = rev.clients[i]
        attempt = Attempt(client.tier.name)
        outcome.attempts.append(attempt)
        last = judging.is_last(spec, i)
        if last:
            outcome.answered = i
            attempt.judgement = judging.judge_answer(spec, i, None, capable_only=rev.capable_only)
        try:
            stops = (
                NEVER
                if last
                else Stops(_give_up(spec, i, max_tokens), _stop_on_calls(spec, i, body.get("tools")))
            )
            reply = await delivery.call(client, last=last, logprobs=logprobs, stops=stops)
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
        if reply.stopped is not None:  # cut at its first tool-call chunks: the outcome was known
            reason, attempt.problem = reply.stopped
            attempt.answer_kind = "tool_call"
            attempt.streamed_tokens = len(reply.logprobs)
            attempt.judgement = Judgement(i, False, reason, None, None)
            continue
        attempt.judgement = await judge_reply(rev, i, client, body, reply, attempt)
        if not attempt.judgement.accepted and attempt.answer_kind == "text" and reply.text:
            attempt.answer = reply.text  # kept for the comparison with the capable tier's answer
        if attempt.judgement.accepted:
            outcome.answered = i
            response = await delivery.send(reply)
            outcome.answer = reply.text
            return response
    raise AssertionError("the last tier always answers")  # pragma: no cover


def _give_up(spec: CascadeSpec, tier: int, max_tokens: int | None) -> GiveUp:
    return lambda seen: acceptance_impossible(spec, tier, seen, max_tokens)


def _stop_on_calls(spec: CascadeSpec, tier: int, tools: Any) -> StopOnCalls:
    """Stop a streamed tool call once its fate is known: at once under the ``escalate`` rule, or
    when it names a function that is not among the request's tools."""
    method = spec.tiers[tier].confidence.tool_call_method

    def stop(calls: StreamedToolCalls) -> tuple[Reason, str | None] | None:
        if method == "escalate":
            return "tool_call_rule", None
        name = unknown_tool(calls.settled_names(), tools)
        if name is not None:
            return "invalid_tool_call", f"{name}: not one of the request's tools"
        return None

    return stop


async def judge_reply(
    rev: RevisionRuntime, i: int, client: TierClient, body: dict[str, Any], reply: Reply, attempt: Attempt
) -> Judgement:
    """Judge tier ``i``'s reply: check a tool call or structured output, then its confidence from
    its logprobs or by asking the tier (``self_eval``; for a call, the tool-call verification)."""
    spec = rev.revision.cascade
    check = judging.check_answer(spec, i, reply.tool_calls, reply.text, body)
    attempt.answer_kind = check.kind
    attempt.problem = check.problem
    measured: float | None = None
    if reply.has_answer and check.problem is None:
        if check.kind == "tool_call":
            if check.method == "logprob":
                measured = judging.logprob_confidence(spec, reply.logprobs)
            elif check.method == "self_eval" and not judging.is_last(spec, i):
                question = judging.verification_request(
                    verification_messages(body["messages"], body.get("tools"), reply.tool_calls)
                )
                measured = await _ask(client, question, attempt)
                if attempt.error is not None:
                    return judging.failed_call(spec, i)
        elif judging.wants_logprobs(spec):
            measured = judging.logprob_confidence(spec, reply.logprobs)
        elif judging.asks_self_eval(spec, i):
            question = judging.self_eval_request(body, reply.text, spec.confidence.self_eval_prompt)
            measured = await _ask(client, question, attempt)
            if attempt.error is not None:
                return judging.failed_call(spec, i)
    raw = judging.effective_raw(check, measured)
    return judging.judge_answer(spec, i, raw, capable_only=rev.capable_only, check=check)


async def _ask(client: TierClient, question: dict[str, Any], attempt: Attempt) -> float | None:
    """P("Y") of a verification call; on failure the attempt records it and None is returned."""
    try:
        verdict = await client.complete(question, logprobs=True)
    except TierFailure as err:
        attempt.failed(err)
        attempt.error = f"self_eval: {err}"
        return None
    attempt.verified(client.tier, verdict.tokens_in, verdict.tokens_out)
    return judging.p_yes(verdict.body)
