"""The official `openai` SDK against `bitnet serve --auth`: the right exception classes,
and the Files and Batch APIs.

usage: openai_auth_check.py BASE_URL MODEL WRONG_KEY FORBIDDEN_KEY LIMITED_KEY GOOD_KEY
"""
import io
import json
import sys
import time

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

# The Files and Batch APIs through the SDK: upload, create, poll, download, list.
lines = "".join(
    json.dumps(
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 3},
        }
    )
    + "\n"
    for i in range(3)
).encode()
c = client(good)
f = c.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="batch")
assert f.purpose == "batch" and f.bytes == len(lines), f
b = c.batches.create(
    input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "sdk"}
)
deadline = time.time() + 60
while b.status not in ("completed", "failed", "cancelled", "expired"):
    assert time.time() < deadline, b
    time.sleep(0.2)
    b = c.batches.retrieve(b.id)
assert b.status == "completed" and b.request_counts.completed == 3, b
out = [json.loads(line) for line in c.files.content(b.output_file_id).text.splitlines()]
assert sorted(o["custom_id"] for o in out) == ["r0", "r1", "r2"], out
assert all(o["response"]["status_code"] == 200 for o in out), out
assert any(x.id == b.id for x in c.batches.list()), "listed"
assert c.files.retrieve(f.id).filename == "in.jsonl"
# OpenAI's expires_after (the SDK sends bracketed form fields); bad values are a BadRequestError.
f2 = c.files.create(
    file=("in.jsonl", io.BytesIO(lines)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 7200}
)
assert f2.expires_at == f2.created_at + 7200, f2
assert c.files.retrieve(f2.id).expires_at == f2.expires_at
try:
    c.files.create(
        file=("in.jsonl", io.BytesIO(lines)), purpose="batch", expires_after={"anchor": "created_at", "seconds": 10}
    )
    raise AssertionError("expires_after.seconds 10 accepted")
except openai.BadRequestError as e:
    assert e.body["param"] == "expires_after[seconds]", e.body
print("ok: Files and Batch APIs through the SDK")
print("openai SDK auth check passed")
