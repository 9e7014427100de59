"""Drives a running `bitnet serve` with the official `openai` Python SDK, unchanged.

Usage: python openai_sdk_check.py BASE_URL MODEL_ID
Exits non-zero with a message on the first failed check.
"""
import sys

import openai
from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        sys.exit(f"FAIL: {what}")
    checks += 1


# Models.
models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list: {models}")

# Chat, not streamed.
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=8, seed=1
)
check(r.object == "chat.completion" and r.id.startswith("chatcmpl-"), "chat object/id")
check(r.choices[0].message.role == "assistant", "chat role")
check(isinstance(r.choices[0].message.content, str), "chat content")
check(r.choices[0].finish_reason in ("stop", "length"), "chat finish_reason")
check(r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, "chat usage")

# Chat, streamed, with usage: same text as the non-streamed call with the same seed.
stream = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": "Hello"}],
    max_tokens=8,
    seed=1,
    stream=True,
    stream_options={"include_usage": True},
)
text, ids, finish, usage, roles = "", set(), None, None, []
for chunk in stream:
    ids.add(chunk.id)
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.role:
            roles.append(c.delta.role)
        text += c.delta.content or ""
        finish = c.finish_reason or finish
check(len(ids) == 1, "one id per stream")
check(roles == ["assistant"], f"role once: {roles}")
check(text == r.choices[0].message.content, f"stream text {text!r} != {r.choices[0].message.content!r}")
check(finish == r.choices[0].finish_reason, "stream finish_reason")
check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, "stream usage")

# Completions, not streamed and streamed.
c = client.completions.create(model=model, prompt="The license", max_tokens=6, temperature=0, logprobs=2)
check(c.object == "text_completion" and len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens, "completion")
s = client.completions.create(
    model=model, prompt="The license", max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
)
stext, susage = "", None
for chunk in s:
    if chunk.usage is not None:
        susage = chunk.usage
    for ch in chunk.choices:
        stext += ch.text
check(stext == c.choices[0].text, f"streamed completion {stext!r} != {c.choices[0].text!r}")
check(susage is not None and susage.completion_tokens == c.usage.completion_tokens, "completion stream usage")

# Exceptions map to the SDK's classes.
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], temperature=9)
    check(False, "temperature=9 accepted")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.body.get("param") == "temperature", f"bad param body: {e.body}")
try:
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    check(False, "context overflow accepted")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded", f"context code: {e.code}")
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    check(False, "unknown model accepted")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", f"not found code: {e.code}")

print(f"openai {openai.__version__}: {checks} checks passed")
