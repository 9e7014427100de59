"""Writes the small torch.save checkpoints used by tests/pickle.rs.

Run from this directory with the project venv:  /work/pyenv/bin/python make_pickle_data.py
All values are deterministic (arange-based) so the Rust tests can hard-code them.
"""
import collections
import io
import os

import torch


def state_dict():
    sd = collections.OrderedDict()
    sd["f32"] = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    sd["f16"] = torch.arange(4, dtype=torch.float16) - 1.5
    sd["bf16"] = torch.arange(4, dtype=torch.bfloat16) * 0.25
    sd["f64"] = torch.arange(3, dtype=torch.float64) / 3
    sd["i64"] = torch.arange(-3, 3, dtype=torch.int64)
    sd["i32"] = torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32)
    sd["i16"] = torch.tensor([-300, 300], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["u8"] = torch.tensor([0, 255], dtype=torch.uint8)
    sd["bool"] = torch.tensor([True, False, True])
    # Non-contiguous: a transposed view (shape [3, 2], strides [1, 3]).
    sd["transposed"] = torch.arange(6, dtype=torch.float32).reshape(2, 3).t()
    # Views sharing one storage: the base, a slice with offset 2, a 2-D strided view.
    base = torch.arange(10, dtype=torch.int64)
    sd["base"] = base
    sd["slice"] = base[2:6]
    sd["strided"] = base.view(2, 5)[:, 1::2]  # offset 1, strides [5, 2] -> [[1, 3], [6, 8]]
    sd["expanded"] = torch.tensor([7.0]).expand(3)  # stride 0
    sd["scalar"] = torch.tensor(3.5)
    sd["empty"] = torch.zeros(0, 4)
    sd["param"] = torch.nn.Parameter(torch.arange(3, dtype=torch.float32))
    return sd


class Evil:
    """Pickles as a call to os.system: a loader that executes it would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo pwned-by-checkpoint",))


def main():
    torch.save(state_dict(), "state_dict.pt")
    torch.save(state_dict(), "protocol5.pt", pickle_protocol=5)
    torch.save(
        {
            "model": {"encoder": {"w": torch.arange(4, dtype=torch.float32).reshape(2, 2)},
                      "head.bias": torch.tensor([-1.0, 1.0])},
            "optimizer": {"lr": 0.1, "betas": (0.9, 0.999)},
            "epoch": 3,
        },
        "wrapped.pt",
    )
    torch.save(
        {"encoder": {"w": torch.arange(2, dtype=torch.float32)},
         "decoder": {"layers": [torch.tensor([1.0]), torch.tensor([2.0])]},
         "step": 7},
        "nested.pt",
    )
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3))
        lin.bias.copy_(torch.tensor([0.5, -0.5]))
    torch.save(lin.state_dict(), "module_state.pt")  # OrderedDict with _metadata (BUILD)
    # Saved through a buffer, the archive prefix is "archive/" instead of the file stem.
    buf = io.BytesIO()
    torch.save({"w": torch.tensor([1.0, 2.0])}, buf)
    with open("buffer_prefix.pt", "wb") as f:
        f.write(buf.getvalue())
    torch.save({"w": torch.zeros(1), "x": Evil()}, "malicious.pt")
    torch.save({"u": torch.zeros(3, dtype=torch.uint16)}, "uint16.pt")
    torch.save({"w": torch.zeros(2)}, "legacy.pt", _use_new_zipfile_serialization=False)


if __name__ == "__main__":
    main()
