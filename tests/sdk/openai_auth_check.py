"""The official `openai` SDK against `bitnet serve --auth`: the right exception classes.

usage: openai_auth_check.py BASE_URL MODEL WRONG_KEY FORBIDDEN_KEY LIMITED_KEY GOOD_KEY
"""
import sys

import openai

base, model, wrong, forbidden, limited, good = sys.argv[1:7]
url = base.rstrip("/") + "/v1"


def client(key):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def chat(key):
    return client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )


def expect(exc, key, what):
    try:
        chat(key)
    except exc as e:
        print(f"ok: {what} -> {type(e).__name__} {e.status_code}")
        return e
    raise SystemExit(f"FAIL: {what} did not raise {exc.__name__}")


# A good key works, streamed with usage too.
r = chat(good)
assert r.usage.completion_tokens >= 1, r
chunks = list(
    client(good).chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
)
assert chunks[-1].usage is not None, chunks[-1]
print("ok: good key, plain and streamed")

e = expect(openai.AuthenticationError, wrong, "wrong key")
assert e.code == "invalid_api_key", e.body
e = expect(openai.PermissionDeniedError, forbidden, "model not allowed")
assert e.type == "permission_error", e.body
chat(limited)  # its one request per minute
e = expect(openai.RateLimitError, limited, "over the RPM")
assert e.code == "rate_limit_exceeded", e.body
assert int(e.response.headers["retry-after"]) >= 1
assert e.response.headers["x-ratelimit-remaining-requests"] == "0"
print("openai SDK auth check passed")
