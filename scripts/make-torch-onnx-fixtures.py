#!/usr/bin/env python3
"""Write the shared fixtures' weights as a PyTorch checkpoint and an ONNX file (tests of
`bitnet convert` from those formats). Needs torch, safetensors and onnx.

  tests/fixtures/torch-onnx/tiny-packed.bin   torch.save of bitnet-tiny-packed's state dict
  tests/fixtures/torch-onnx/tiny-master.bin   torch.save of bitnet-tiny-master's state dict
  tests/fixtures/torch-onnx/tiny-master.onnx  the same tensors as ONNX initializers (f32 raw_data)
"""
import os, sys
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
import torch
from safetensors.torch import load_file

here = os.path.dirname(os.path.abspath(__file__))
fx = os.environ.get("BITNET_FIXTURES", os.path.join(here, "..", "..", "shared", "fixtures"))
out = os.path.join(here, "..", "tests", "fixtures", "torch-onnx")
os.makedirs(out, exist_ok=True)
for name in ("packed", "master"):
    sd = load_file(os.path.join(fx, f"bitnet-tiny-{name}", "model.safetensors"))
    torch.save(dict(sd), os.path.join(out, f"tiny-{name}.bin"))
sd = load_file(os.path.join(fx, "bitnet-tiny-master", "model.safetensors"))
inits = [numpy_helper.from_array(v.float().numpy(), name=k) for k, v in sd.items()]
graph = helper.make_graph([], "bitnet", [], [], initializer=inits)
onnx.save(helper.make_model(graph), os.path.join(out, "tiny-master.onnx"))
print("written to", out)
