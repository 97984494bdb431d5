"""What a user of the official Anthropic and OpenAI Python SDKs needs from mythosd's HTTP front end.

Run one scenario per process, against a daemon (and mock providers, faults already queued) that
tests/tests/sdk.rs prepared for it:

    MYTHOS_BASE_URL=http://127.0.0.1:PORT MYTHOS_TOKEN=mythos-... \
    MYTHOS_PROMPT='...' MYTHOS_EXPECT='...' python tests/sdk/sdk_checks.py SCENARIO

MYTHOS_BASE_URL has no `/v1` (the Anthropic SDK's convention; the OpenAI client gets `/v1`
added here). MYTHOS_PROMPT is the prompt to send and MYTHOS_EXPECT the simulated providers'
answer to it (`mythosd::sim::answer_for`), for the scenarios that compare text. Exit status 0
means every check held; otherwise the first failed check is printed on stderr.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import anthropic
import openai

try:  # The pinned SDKs use httpx2; older ones use httpx. Both have the same transport API.
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef]

BASE = os.environ.get("MYTHOS_BASE_URL", "").rstrip("/")
TOKEN = os.environ.get("MYTHOS_TOKEN", "")
# Every call gets a deadline: a hung stream must fail the check, not hang the test run.
TIMEOUT = 30.0
# A current model name: the router takes any name it does not know as a hint, as agents send them.
MODEL = "claude-sonnet-5-5"
TOOL = {
    "name": "record",
    "description": "Record a note.",
    "input_schema": {
        "type": "object",
        "properties": {"text": {"type": "string"}},
        "required": ["text"],
    },
}
OPENAI_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL["name"],
        "description": TOOL["description"],
        "parameters": TOOL["input_schema"],
    },
}


class CheckFailed(Exception):
    """A check did not hold."""


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def env(name: str) -> str:
    value = os.environ.get(name)
    if value is None:
        raise CheckFailed(f"this scenario needs {name} in the environment")
    return value


class Counting(httpx.HTTPTransport):
    """An HTTP transport that records every request the SDK sends, retries included."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []
        self.responses: list[httpx.Response] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(f"{request.method} {request.url}")
        response = super().handle_request(request)
        self.responses.append(response)
        return response


def anthropic_client(
    token: str | None = TOKEN, *, bearer: bool = False, max_retries: int = 2, base: str = BASE
) -> tuple[anthropic.Anthropic, Counting]:
    transport = Counting()
    kwargs: dict[str, Any] = {"auth_token": token} if bearer else {"api_key": token}
    client = anthropic.Anthropic(
        base_url=base,
        timeout=TIMEOUT,
        max_retries=max_retries,
        http_client=anthropic.DefaultHttpxClient(transport=transport),
        **kwargs,
    )
    return client, transport


def openai_client(
    token: str = TOKEN, *, max_retries: int = 2, base: str = BASE
) -> tuple[openai.OpenAI, Counting]:
    transport = Counting()
    client = openai.OpenAI(
        base_url=f"{base}/v1",
        api_key=token,
        timeout=TIMEOUT,
        max_retries=max_retries,
        http_client=openai.DefaultHttpxClient(transport=transport),
    )
    return client, transport


def model_of(provider: str) -> str:
    """`PROVIDER/MODEL` of a provider, as `GET /v1/models` lists it (a pin: no fallback)."""
    client, _ = openai_client()
    ids = [m.id for m in client.models.list()]
    for mid in ids:
        if mid.startswith(provider + "/"):
            return mid
    raise CheckFailed(f"/v1/models lists no model of {provider}: {ids}")


def text_of_message(message: Any) -> str:
    return "".join(b.text for b in message.content if b.type == "text")


def tool_uses(message: Any) -> list[Any]:
    return [b for b in message.content if b.type == "tool_use"]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


# ----- Anthropic SDK -----------------------------------------------------------------------


def anthropic_create() -> None:
    client, transport = anthropic_client()
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=512, messages=user(env("MYTHOS_PROMPT"))
    )
    message = raw.parse()
    check(message.type == "message" and message.role == "assistant", f"not a message: {message}")
    check(text_of_message(message) == env("MYTHOS_EXPECT"), f"wrong text: {message.content}")
    check(message.stop_reason == "end_turn", f"stop_reason {message.stop_reason}")
    check(message.usage.output_tokens > 0, f"no output tokens: {message.usage}")
    for h in ["x-mythos-provider", "x-mythos-model", "x-mythos-request", "x-mythos-rerouted"]:
        check(raw.headers.get(h) is not None, f"header {h} missing: {dict(raw.headers)}")
    check(len(transport.requests) == 1, f"requests sent: {transport.requests}")


def anthropic_stream() -> None:
    client, _ = anthropic_client()
    seen = []
    with client.messages.stream(
        model=MODEL, max_tokens=512, messages=user(env("MYTHOS_PROMPT"))
    ) as stream:
        for text in stream.text_stream:
            seen.append(text)
        message = stream.get_final_message()
    check(len(seen) > 5, f"the text came in {len(seen)} piece(s), not streamed")
    check("".join(seen) == env("MYTHOS_EXPECT"), f"streamed text differs: {''.join(seen)!r}")
    check(text_of_message(message) == env("MYTHOS_EXPECT"), f"final text: {message.content}")
    check(message.stop_reason == "end_turn", f"stop_reason {message.stop_reason}")
    check(message.usage.output_tokens > 1, f"usage not updated by message_delta: {message.usage}")


def anthropic_web_search() -> None:
    """Claude Code's WebSearch: the server tool goes to Anthropic, the SDK's stream gathers the
    search call, its results and the answer; the next turn sends them back and is taken."""
    client, _ = anthropic_client()
    tools: Any = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}]
    prompt = env("MYTHOS_PROMPT")
    with client.messages.stream(
        model=MODEL, max_tokens=512, tools=tools, messages=user(prompt)
    ) as stream:
        for _ in stream:
            pass
        message = stream.get_final_message()
    kinds = [b.type for b in message.content]
    check(kinds == ["server_tool_use", "web_search_tool_result", "text"], f"blocks: {kinds}")
    call, results = message.content[0], message.content[1]
    check(call.name == "web_search" and call.input == {"query": prompt}, f"the search: {call}")
    check(results.tool_use_id == call.id, f"results answer another call: {results}")
    check(len(results.content) == 1 and results.content[0].url.startswith("https://"),
          f"results: {results.content}")
    check(text_of_message(message) == env("MYTHOS_EXPECT"), f"text: {message.content}")
    cited = message.content[2].citations or []
    check(len(cited) == 1 and cited[0].url == results.content[0].url, f"citations: {cited}")
    check(message.stop_reason == "end_turn", f"stop_reason {message.stop_reason}")
    history: Any = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": "thanks"},
    ]
    again = client.messages.create(model=MODEL, max_tokens=512, tools=tools, messages=history)
    check(again.stop_reason == "end_turn", f"the next turn: {again}")


def anthropic_pdf() -> None:
    """A PDF as a `document` block, whole and streamed: the model reads it."""
    client, _ = anthropic_client()
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjcKJeLjz9MK"}
    content: Any = [
        {"type": "document", "source": pdf, "title": "spec.pdf"},
        {"type": "text", "text": env("MYTHOS_PROMPT")},
    ]
    message = client.messages.create(
        model=MODEL, max_tokens=512, messages=[{"role": "user", "content": content}]
    )
    want = "I read 1 document(s). " + env("MYTHOS_EXPECT")
    check(text_of_message(message) == want, f"text: {message.content}")


def anthropic_beta() -> None:
    """The beta namespace, and `?beta=true` (what Claude Code sends) on the plain one."""
    client, transport = anthropic_client()
    message = client.beta.messages.create(
        model=MODEL, max_tokens=512, messages=user(env("MYTHOS_PROMPT"))
    )
    check(text_of_message(message) == env("MYTHOS_EXPECT"), f"wrong text: {message.content}")
    with client.beta.messages.stream(
        model=MODEL, max_tokens=512, messages=user(env("MYTHOS_PROMPT"))
    ) as stream:
        final = stream.get_final_message()
    check(text_of_message(final) == env("MYTHOS_EXPECT"), f"beta stream text: {final.content}")
    for streaming in [False, True]:
        before = len(transport.requests)
        if streaming:
            with client.messages.stream(
                model=MODEL,
                max_tokens=512,
                messages=user(env("MYTHOS_PROMPT")),
                extra_query={"beta": "true"},
            ) as stream:
                final = stream.get_final_message()
        else:
            final = client.messages.create(
                model=MODEL,
                max_tokens=512,
                messages=user(env("MYTHOS_PROMPT")),
                extra_query={"beta": "true"},
            )
        sent = transport.requests[before:]
        check(
            len(sent) == 1 and sent[0].endswith("/v1/messages?beta=true"),
            f"requests sent: {sent}",
        )
        check(text_of_message(final) == env("MYTHOS_EXPECT"), f"?beta=true text: {final.content}")


def anthropic_tools() -> None:
    """A whole tool round trip in Anthropic's format, served by an OpenAI-format provider."""
    client, _ = anthropic_client()
    model = model_of("openai")
    prompt = env("MYTHOS_PROMPT")
    messages: list[dict[str, Any]] = user(prompt)
    with client.messages.stream(
        model=model, max_tokens=512, tools=[TOOL], messages=messages
    ) as stream:
        first = stream.get_final_message()
    check(first.stop_reason == "tool_use", f"stop_reason {first.stop_reason}: {first.content}")
    calls = tool_uses(first)
    check(len(calls) == 1, f"tool calls: {first.content}")
    call = calls[0]
    check(call.name == TOOL["name"], f"tool name {call.name}")
    check(call.input == {"text": env("MYTHOS_EXPECT")}, f"tool input {call.input!r}")
    check(bool(call.id), "the tool call has no id")
    # The assistant turn goes back as the SDK returned it, then the result.
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": call.id, "content": "noted"},
                # The simulated OpenAI-format provider answers the last plain user text; without
                # this it would see the original `call:` prompt again and call the tool again.
                {"type": "text", "text": "thanks, that is all"},
            ],
        }
    )
    raw = client.messages.with_raw_response.create(
        model=model, max_tokens=512, tools=[TOOL], messages=messages
    )
    final = raw.parse()
    check(final.stop_reason == "end_turn", f"stop_reason {final.stop_reason}: {final.content}")
    check(not tool_uses(final), f"a second tool call: {final.content}")
    check(text_of_message(final) != "", "no final text")
    served = raw.headers.get("x-mythos-provider")
    check(served == "openai", f"served by {served}, not by the pinned provider")


def anthropic_count_tokens() -> None:
    client, transport = anthropic_client()
    small = client.messages.count_tokens(model=MODEL, messages=user("hello"))
    big = client.messages.count_tokens(
        model=MODEL,
        system="You are terse.",
        tools=[TOOL],
        messages=user("hello " * 400),
    )
    check(small.input_tokens > 0, f"count {small}")
    check(big.input_tokens > small.input_tokens + 300, f"{big} is not more than {small}")
    check(len(transport.requests) == 2, f"requests: {transport.requests}")
    check(
        all(r.endswith("/v1/messages/count_tokens") for r in transport.requests),
        f"requests: {transport.requests}",
    )


def anthropic_models() -> None:
    client, _ = anthropic_client()
    ids = [m.id for m in client.models.list()]
    for want in ["mythos", "anthropic/", "deepseek/", "openai/"]:
        check(any(i == want or (want.endswith("/") and i.startswith(want)) for i in ids), f"{want} not in {ids}")
    one = next(m for m in client.models.list() if m.id.startswith("anthropic/"))
    check(one.type == "model" and one.display_name, f"model entry {one}")


def anthropic_auth() -> None:
    # This SDK sends `api_key` as a bearer token; the x-api-key form is checked in http.rs.
    no_token = {"X-Api-Key": anthropic.omit, "Authorization": anthropic.omit}
    for label, token, bearer, extra in [
        ("a wrong api_key", "mythos-wrong", False, None),
        ("a wrong auth_token", "mythos-wrong", True, None),
        ("no token", "unused", False, no_token),
    ]:
        client, transport = anthropic_client(token, bearer=bearer)
        try:
            client.messages.create(model=MODEL, max_tokens=16, messages=user("hi"), extra_headers=extra)
        except anthropic.AuthenticationError as e:
            check(e.status_code == 401, f"{label}: status {e.status_code}")
            check("token" in str(e.message), f"{label}: message does not help: {e.message}")
        else:
            raise CheckFailed(f"{label} was accepted")
        check(len(transport.requests) == 1, f"{label}: a 401 was retried: {transport.requests}")
        if extra:
            sent = transport.responses[0].request.headers
            check("x-api-key" not in sent and "authorization" not in sent, f"{label}: sent {sent}")
    # The right token as a bearer token works too (ANTHROPIC_AUTH_TOKEN).
    client, _ = anthropic_client(TOKEN, bearer=True)
    models = client.models.list()
    check(len(models.data) > 0, "no models with a bearer token")


def anthropic_failover_text() -> None:
    """The primary breaks mid-text (queued by the test): the SDK sees one seamless answer."""
    client, _ = anthropic_client()
    prompt = env("MYTHOS_PROMPT")
    pieces = []
    with client.messages.stream(
        model=MODEL, max_tokens=512, messages=user(prompt)
    ) as stream:
        for text in stream.text_stream:
            pieces.append(text)
        faulted = stream.get_final_message()
    baseline = client.messages.create(model=MODEL, max_tokens=512, messages=user(prompt))
    want = text_of_message(baseline)
    check(want == env("MYTHOS_EXPECT"), f"the fault-free answer is not the simulated one: {want!r}")
    check("".join(pieces) == want, f"streamed text differs:\n got {''.join(pieces)!r}\nwant {want!r}")
    check(text_of_message(faulted) == want, f"final message differs: {faulted.content}")
    check(len(faulted.content) == 1, f"blocks: {faulted.content}")
    check(faulted.stop_reason == "end_turn", f"stop_reason {faulted.stop_reason}")


def anthropic_failover_tool() -> None:
    """The primary breaks in the middle of a tool call: the call the SDK gets is whole."""
    client, _ = anthropic_client()
    prompt = env("MYTHOS_PROMPT")
    with client.messages.stream(
        model=MODEL, max_tokens=512, tools=[TOOL], messages=user(prompt)
    ) as stream:
        faulted = stream.get_final_message()
    baseline = client.messages.create(
        model=MODEL, max_tokens=512, tools=[TOOL], messages=user(prompt)
    )
    got, want = tool_uses(faulted), tool_uses(baseline)
    check(len(got) == 1 and len(want) == 1, f"tool calls: {faulted.content} / {baseline.content}")
    check(got[0].input == want[0].input, f"tool input differs:\n got {got[0].input!r}\nwant {want[0].input!r}")
    check(got[0].input == {"text": env("MYTHOS_EXPECT")}, f"tool input {got[0].input!r}")
    check(faulted.stop_reason == "tool_use", f"stop_reason {faulted.stop_reason}")


def anthropic_pinned_failure() -> None:
    """A pinned provider breaks after the stream started: the SDK raises, never a short answer."""
    client, _ = anthropic_client()
    model = model_of("anthropic")
    pieces = []
    try:
        with client.messages.stream(
            model=model, max_tokens=512, messages=user(env("MYTHOS_PROMPT"))
        ) as stream:
            for text in stream.text_stream:
                pieces.append(text)
            message = stream.get_final_message()
    except anthropic.APIStatusError as e:
        error = e.body.get("error") if isinstance(e.body, dict) else None
        check(
            isinstance(error, dict) and error.get("type") == "api_error" and error.get("message"),
            f"error body {e.body!r}",
        )
    else:
        raise CheckFailed(f"a silent truncated success: {text_of_message(message)!r}")
    check(pieces, "the failure came before any text: this scenario wants it after the start")
    check("".join(pieces) != env("MYTHOS_EXPECT"), "the whole answer arrived")


def anthropic_no_double_retry() -> None:
    no_double_retry(
        lambda base, retries: anthropic_client(max_retries=retries, base=base),
        lambda c: c.messages.create(model=MODEL, max_tokens=16, messages=user("hi")),
        anthropic.RateLimitError,
    )


# ----- OpenAI SDK --------------------------------------------------------------------------


def openai_create() -> None:
    client, transport = openai_client()
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=user(env("MYTHOS_PROMPT"))
    )
    completion = raw.parse()
    choice = completion.choices[0]
    check(choice.message.content == env("MYTHOS_EXPECT"), f"wrong text: {choice.message}")
    check(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}")
    check(completion.usage is not None and completion.usage.completion_tokens > 0, f"usage {completion.usage}")
    check(raw.headers.get("x-mythos-request") is not None, f"headers {dict(raw.headers)}")
    check(len(transport.requests) == 1, f"requests: {transport.requests}")


def openai_stream() -> None:
    client, _ = openai_client()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=user(env("MYTHOS_PROMPT")),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    check(text == env("MYTHOS_EXPECT"), f"streamed text {text!r}")
    check(chunks[0].choices and chunks[0].choices[0].delta.role == "assistant", f"first chunk {chunks[0]}")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"], f"finish reasons {finishes}")
    usage = [c for c in chunks if c.usage is not None]
    check(len(usage) == 1 and not usage[0].choices, f"usage chunks {usage}")
    check(usage[0] is chunks[-1], "the usage chunk is not the last")
    check(usage[0].usage.completion_tokens > 0, f"usage {usage[0].usage}")
    # Without include_usage no usage chunk comes.
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user("x"), stream=True))
    check(all(c.usage is None for c in chunks), "a usage chunk nobody asked for")
    # The stream helper accumulates the same answer.
    if hasattr(client.chat.completions, "stream"):
        with client.chat.completions.stream(model="gpt-4o", messages=user(env("MYTHOS_PROMPT"))) as s:
            for _ in s:
                pass
            final = s.get_final_completion()
        check(final.choices[0].message.content == env("MYTHOS_EXPECT"), f"helper: {final.choices[0]}")
        check(final.choices[0].finish_reason == "stop", f"helper finish {final.choices[0].finish_reason}")


def responses_create_and_stream() -> None:
    """The Responses API (Codex's): a whole answer, and the stream helper's final response."""
    client, _ = openai_client()
    prompt = env("MYTHOS_PROMPT")
    r = client.responses.create(model="mythos/code", input=prompt)
    check(r.status == "completed", f"status {r.status}")
    check(r.output_text == env("MYTHOS_EXPECT"), f"output_text {r.output_text!r}")
    check(r.usage is not None and r.usage.output_tokens > 0, f"usage {r.usage}")
    with client.responses.stream(model="mythos/code", input=prompt) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    check("".join(deltas) == env("MYTHOS_EXPECT"), f"streamed {''.join(deltas)!r}")
    check(len(deltas) > 1, "the answer arrived in one piece, not streamed")
    check(final.output_text == env("MYTHOS_EXPECT"), f"final {final.output_text!r}")


RESPONSES_TOOL = {
    "type": "function",
    "name": "record",
    "description": "Record a note.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


def responses_tools() -> None:
    """A function call and its output through the Responses API, served by the Anthropic-format
    provider (pinned), read with the stream helper."""
    client, _ = openai_client()
    model = model_of("anthropic")
    prompt = env("MYTHOS_PROMPT")
    with client.responses.stream(model=model, input=prompt, tools=[RESPONSES_TOOL]) as s:
        for _ in s:
            pass
        first = s.get_final_response()
    calls = [o for o in first.output if o.type == "function_call"]
    check(len(calls) == 1, f"output {first.output}")
    check(calls[0].name == "record", f"call {calls[0]}")
    args = json.loads(calls[0].arguments)
    check(args == {"text": env("MYTHOS_EXPECT")}, f"arguments {args!r}")
    follow = client.responses.create(
        model=model,
        tools=[RESPONSES_TOOL],
        input=[
            {"role": "user", "content": prompt},
            {"type": "function_call", "call_id": calls[0].call_id, "name": "record",
             "arguments": calls[0].arguments},
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": "recorded"},
            {"role": "user", "content": "thanks"},
        ],
    )
    check(follow.status == "completed" and follow.output_text, f"follow-up {follow}")


def openai_tools() -> None:
    """A whole tool round trip in OpenAI's format, served by the Anthropic-format provider."""
    client, _ = openai_client()
    model = model_of("anthropic")
    messages: list[dict[str, Any]] = user(env("MYTHOS_PROMPT"))
    chunks = list(
        client.chat.completions.create(model=model, messages=messages, tools=[OPENAI_TOOL], stream=True)
    )
    calls: dict[int, dict[str, str]] = {}
    for c in chunks:
        for tc in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            entry = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += tc.id or ""
            if tc.function:
                entry["name"] += tc.function.name or ""
                entry["arguments"] += tc.function.arguments or ""
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["tool_calls"], f"finish reasons {finishes}")
    check(list(calls) == [0], f"tool calls {calls}")
    call = calls[0]
    check(call["name"] == "record" and call["id"], f"tool call {call}")
    check(json.loads(call["arguments"]) == {"text": env("MYTHOS_EXPECT")}, f"arguments {call['arguments']!r}")
    messages.append(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call["id"], "type": "function", "function": {"name": call["name"], "arguments": call["arguments"]}}
            ],
        }
    )
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": "noted"})
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=messages, tools=[OPENAI_TOOL]
    )
    final = raw.parse()
    choice = final.choices[0]
    check(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}: {choice.message}")
    check(not choice.message.tool_calls, f"a second tool call: {choice.message}")
    check(bool(choice.message.content), "no final text")
    served = raw.headers.get("x-mythos-provider")
    check(served == "anthropic", f"served by {served}, not by the pinned provider")


def openai_legacy_functions() -> None:
    """The deprecated `functions` / `function_call` (OpenAI still serves them): the call comes
    back as `function_call`, and the `function` turn that answers it (no call id) goes on."""
    client, _ = openai_client()
    model = model_of("anthropic")
    function = OPENAI_TOOL["function"]
    messages: list[dict[str, Any]] = user(env("MYTHOS_PROMPT"))
    chunks = list(
        client.chat.completions.create(  # type: ignore[call-overload]
            model=model, messages=messages, functions=[function], stream=True
        )
    )
    name = arguments = ""
    for c in chunks:
        delta = c.choices[0].delta if c.choices else None
        check(not (delta and delta.tool_calls), f"tool_calls to a functions client: {c}")
        if delta and delta.function_call:
            name += delta.function_call.name or ""
            arguments += delta.function_call.arguments or ""
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["function_call"], f"finish reasons {finishes}")
    check(name == "record", f"function {name!r}")
    check(json.loads(arguments) == {"text": env("MYTHOS_EXPECT")}, f"arguments {arguments!r}")
    messages.append({"role": "assistant", "content": None, "function_call": {"name": name, "arguments": arguments}})
    messages.append({"role": "function", "name": name, "content": "noted"})
    final = client.chat.completions.create(  # type: ignore[call-overload]
        model=model, messages=messages, functions=[function]
    )
    choice = final.choices[0]
    check(choice.finish_reason == "stop", f"finish_reason {choice.finish_reason}: {choice.message}")
    check(not choice.message.function_call and not choice.message.tool_calls, f"a second call: {choice.message}")
    check(bool(choice.message.content), "no final text")


def openai_failover_text() -> None:
    client, _ = openai_client()
    prompt = env("MYTHOS_PROMPT")
    chunks = list(client.chat.completions.create(model="gpt-4o", messages=user(prompt), stream=True))
    got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    baseline = client.chat.completions.create(model="gpt-4o", messages=user(prompt))
    want = baseline.choices[0].message.content
    check(want == env("MYTHOS_EXPECT"), f"the fault-free answer is not the simulated one: {want!r}")
    check(got == want, f"streamed text differs:\n got {got!r}\nwant {want!r}")
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    check(finishes == ["stop"], f"finish reasons {finishes}")


def openai_failover_tool() -> None:
    client, _ = openai_client()
    prompt = env("MYTHOS_PROMPT")
    with client.chat.completions.stream(model="gpt-4o", messages=user(prompt), tools=[OPENAI_TOOL]) as s:
        for _ in s:
            pass
        faulted = s.get_final_completion()
    baseline = client.chat.completions.create(model="gpt-4o", messages=user(prompt), tools=[OPENAI_TOOL])
    got = faulted.choices[0].message.tool_calls or []
    want = baseline.choices[0].message.tool_calls or []
    check(len(got) == 1 and len(want) == 1, f"tool calls {got} / {want}")
    got_args, want_args = json.loads(got[0].function.arguments), json.loads(want[0].function.arguments)
    check(got_args == want_args, f"arguments differ:\n got {got_args!r}\nwant {want_args!r}")
    check(got_args == {"text": env("MYTHOS_EXPECT")}, f"arguments {got_args!r}")
    check(faulted.choices[0].finish_reason == "tool_calls", f"finish {faulted.choices[0].finish_reason}")


def openai_pinned_failure() -> None:
    client, _ = openai_client()
    model = model_of("openai")
    pieces = []
    try:
        for c in client.chat.completions.create(model=model, messages=user(env("MYTHOS_PROMPT")), stream=True):
            if c.choices and c.choices[0].delta.content:
                pieces.append(c.choices[0].delta.content)
    except openai.APIError as e:
        check(isinstance(e.body, dict) and e.body.get("message"), f"error body {e.body!r}")
    else:
        raise CheckFailed(f"a silent truncated success: {''.join(pieces)!r}")
    check(pieces, "the failure came before any text: this scenario wants it after the start")
    check("".join(pieces) != env("MYTHOS_EXPECT"), "the whole answer arrived")


def openai_auth() -> None:
    for label, token, extra in [
        ("a wrong token", "mythos-wrong", None),
        ("no token", "unused", {"Authorization": openai.omit}),
    ]:
        client, transport = openai_client(token)
        try:
            client.chat.completions.create(model="gpt-4o", messages=user("hi"), extra_headers=extra)
        except openai.AuthenticationError as e:
            check(e.status_code == 401, f"{label}: status {e.status_code}")
            check(isinstance(e.body, dict) and e.body.get("code") == "invalid_api_key", f"{label}: {e.body}")
        else:
            raise CheckFailed(f"{label} was accepted")
        check(len(transport.requests) == 1, f"{label}: a 401 was retried: {transport.requests}")
        if extra:
            sent = transport.responses[0].request.headers
            check("authorization" not in sent, f"{label}: sent {sent}")


def openai_models() -> None:
    client, _ = openai_client()
    models = list(client.models.list())
    ids = [m.id for m in models]
    for want in ["mythos", "mythos/code"]:
        check(want in ids, f"{want} not in {ids}")
    for provider in ["anthropic", "deepseek", "openai"]:
        check(any(i.startswith(provider + "/") for i in ids), f"no {provider} model in {ids}")
    check(all(m.object == "model" and m.owned_by for m in models), f"entries {models}")


def openai_no_double_retry() -> None:
    no_double_retry(
        lambda base, retries: openai_client(max_retries=retries, base=base),
        lambda c: c.chat.completions.create(model="gpt-4o", messages=user("hi")),
        openai.RateLimitError,
    )


# ----- No double retry ---------------------------------------------------------------------


class _Always429(BaseHTTPRequestHandler):
    """A server that answers every POST with a retryable 429 and no `x-should-retry`."""

    def do_POST(self) -> None:  # noqa: N802 (the http.server API)
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
        self.send_response(429)
        self.send_header("content-type", "application/json")
        self.send_header("retry-after-ms", "10")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def no_double_retry(
    make: Callable[[str, int], tuple[Any, Counting]],
    call: Callable[[Any], Any],
    rate_limit_error: type[Exception],
) -> None:
    """Every provider is rate limited (queued by the test) and the daemon has already retried
    and failed over: the SDK, left at its default of 2 retries, must send exactly one request.

    The requests are counted in the SDK's own transport, where every retry passes. Counting at
    the mocks would prove nothing: after the first attempt every provider is cooling down, so
    the daemon answers an SDK retry itself without touching a mock. A control run against a
    plain 429 server shows that the counter does see the SDK's retries when they happen.
    """
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Always429)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        plain = f"http://127.0.0.1:{server.server_address[1]}"
        client, transport = make(plain, 2)
        try:
            call(client)
        except rate_limit_error:
            pass
        check(len(transport.requests) == 3, f"control: the counter saw {transport.requests}")
    finally:
        server.shutdown()

    client, transport = make(BASE, 2)
    try:
        call(client)
    except rate_limit_error as e:
        headers = e.response.headers  # type: ignore[attr-defined]
        check(e.status_code == 429, f"status {e.status_code}")  # type: ignore[attr-defined]
        check(headers.get("x-should-retry") == "false", f"x-should-retry: {headers.get('x-should-retry')!r}")
        check(headers.get("retry-after") is not None, f"no retry-after: {dict(headers)}")
    else:
        raise CheckFailed("a request succeeded while every provider was rate limited")
    check(len(transport.requests) == 1, f"the SDK retried what the daemon had retried: {transport.requests}")


SCENARIOS: dict[str, Callable[[], None]] = {
    f.__name__: f
    for f in [
        anthropic_create,
        anthropic_stream,
        anthropic_beta,
        anthropic_web_search,
        anthropic_pdf,
        anthropic_tools,
        anthropic_count_tokens,
        anthropic_models,
        anthropic_auth,
        anthropic_failover_text,
        anthropic_failover_tool,
        anthropic_pinned_failure,
        anthropic_no_double_retry,
        openai_create,
        openai_stream,
        openai_tools,
        openai_legacy_functions,
        openai_failover_text,
        openai_failover_tool,
        openai_pinned_failure,
        openai_auth,
        openai_models,
        openai_no_double_retry,
        responses_create_and_stream,
        responses_tools,
    ]
}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in SCENARIOS:
        print(f"usage: {argv[0]} SCENARIO\nscenarios: {' '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    if not BASE or not TOKEN:
        print("MYTHOS_BASE_URL and MYTHOS_TOKEN must be set", file=sys.stderr)
        return 2
    name = argv[1]
    print(f"anthropic {anthropic.__version__}, openai {openai.__version__}: {name}")
    try:
        SCENARIOS[name]()
    except CheckFailed as e:
        print(f"FAILED {name}: {e}", file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 (an unexpected exception is a failed check too)
        print(f"FAILED {name} with an unexpected exception:", file=sys.stderr)
        traceback.print_exc()
        return 1
    print(f"ok {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
