"""Writes the small ONNX files used by tests/onnx.rs.

Run from this directory with the project venv (needs `pip install onnx`):
    /work/pyenv/bin/python make_onnx_data.py
Initializers are built with onnx.helper so every storage form is covered (raw_data,
float_data, int32_data carrying f16/bf16/int8/uint8/bool bit patterns, int64_data,
double_data, external data); two tiny torch exports show kept and lost parameter names.
"""
import struct

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def typed(name, dtype, dims, vals):
    return helper.make_tensor(name, dtype, dims, vals, raw=False)


def raw(name, dtype, dims, data):
    return helper.make_tensor(name, dtype, dims, data, raw=True)


def model(initializers, name):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], name, [x], [y],
                              initializer=initializers)
    return helper.make_model(graph, producer_name="bitnet-rust tests")


def initializers():
    inits = [
        numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5,
                                "model.embed.weight"),  # raw_data
        typed("model.norm.weight", TensorProto.FLOAT, [4], [1.0, -2.0, 0.5, 3.25]),  # float_data
        typed("model.pos", TensorProto.INT64, [3], [-1, 0, 1 << 40]),  # int64_data
        typed("model.i32", TensorProto.INT32, [3], [-(2**31), 0, 2**31 - 1]),  # int32_data
        raw("model.f16_raw", TensorProto.FLOAT16, [3],
            np.array([-1.5, 0.0, 65504.0], dtype=np.float16).tobytes()),
        typed("model.f16_typed", TensorProto.FLOAT16, [2], [0.5, -2.0]),  # bits in int32_data
        typed("model.bf16_typed", TensorProto.BFLOAT16, [2], [1.0, -0.5]),  # bits in int32_data
        raw("model.bf16_raw", TensorProto.BFLOAT16, [2], struct.pack("<HH", 0x3F80, 0xC000)),
        typed("model.i8", TensorProto.INT8, [2], [-128, 127]),
        raw("model.u8", TensorProto.UINT8, [2], bytes([0, 255])),
        typed("model.i16", TensorProto.INT16, [2], [-300, 300]),
        typed("model.bool", TensorProto.BOOL, [3], [True, False, True]),
        typed("model.f64", TensorProto.DOUBLE, [2], [1.0 / 3.0, -2.5]),  # double_data
        typed("model.scalar", TensorProto.FLOAT, [], [7.0]),
        typed("model.empty", TensorProto.FLOAT, [0, 3], []),
    ]
    return inits


def external():
    # Side file: ext.a (f32 [2, 2]) at 0, ext.b (i64 [3]) at 64; ext.c (f32 [2]) has no length.
    a = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32).tobytes()
    b = np.array([-7, 0, 7], dtype=np.int64).tobytes()
    c = np.array([0.25, -0.25], dtype=np.float32).tobytes()
    blob = a + bytes(64 - len(a)) + b + bytes(128 - 64 - len(b)) + c
    with open("external.bin", "wb") as f:
        f.write(blob)
    tensors = []
    for name, dtype, dims, offset, length in [("ext.a", TensorProto.FLOAT, [2, 2], 0, 16),
                                              ("ext.b", TensorProto.INT64, [3], 64, 24),
                                              ("ext.c", TensorProto.FLOAT, [2], 128, None)]:
        t = TensorProto()
        t.name = name
        t.data_type = dtype
        t.dims.extend(dims)
        entries = [("location", "external.bin"), ("offset", str(offset))]
        if length is not None:
            entries.append(("length", str(length)))
        for key, value in entries:
            entry = t.external_data.add()
            entry.key, entry.value = key, value
        t.data_location = TensorProto.EXTERNAL
        tensors.append(t)
    tensors.append(typed("inline", TensorProto.FLOAT, [1], [9.0]))
    onnx.save(model(tensors, "external"), "external.onnx")


def torch_exports():
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(4, 4, bias=False)
            self.k_proj = torch.nn.Linear(4, 4, bias=False)
            self.o_proj = torch.nn.Linear(4, 4, bias=False)
            self.norm = torch.nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.o_proj(self.q_proj(x) * self.k_proj(x)) * self.norm

    torch.manual_seed(0)
    m = Block().eval()
    x = torch.ones(1, 4)
    # Constant folding pre-transposes the MatMul weights: they become `onnx::MatMul_*`.
    torch.onnx.export(m, (x,), "torch_names_lost.onnx", dynamo=False, do_constant_folding=True)
    torch.onnx.export(m, (x,), "torch_names_kept.onnx", dynamo=False, do_constant_folding=False)


def main():
    onnx.save(model(initializers(), "initializers"), "initializers.onnx")
    external()
    torch_exports()


if __name__ == "__main__":
    main()
