//! ONNX initializers. (in progress)
