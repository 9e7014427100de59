//! ONNX initializer reader: files from tests/data/make_onnx_data.py, hand-encoded hostile
//! protobufs, and mutation fuzzing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitnet_formats::onnx::{check_names, names_look_lost, read_onnx, OnnxError};
use bitnet_formats::raw::{RawDtype, RawTensor};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn get<'a>(ts: &'a [RawTensor], name: &str) -> &'a RawTensor {
    ts.iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

fn f32s(t: &RawTensor) -> Vec<f32> {
    assert_eq!(t.dtype, RawDtype::F32, "{}", t.name);
    t.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(t: &RawTensor) -> Vec<i64> {
    assert_eq!(t.dtype, RawDtype::I64, "{}", t.name);
    t.data
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn halfs(t: &RawTensor, dtype: RawDtype) -> Vec<f32> {
    assert_eq!(t.dtype, dtype, "{}", t.name);
    let bits = t
        .data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    match dtype {
        RawDtype::F16 => bits.map(|b| half::f16::from_bits(b).to_f32()).collect(),
        _ => bits.map(|b| half::bf16::from_bits(b).to_f32()).collect(),
    }
}

#[test]
fn reads_every_storage_form() {
    let ts = read_onnx(&data("initializers.onnx")).unwrap();
    assert_eq!(ts.len(), 15);
    assert_eq!(ts[0].name, "model.embed.weight", "file order is kept");
    for t in &ts {
        assert_eq!(
            t.data.len(),
            t.shape.iter().product::<usize>() * t.dtype.size(),
            "{}",
            t.name
        );
    }
    let emb = get(&ts, "model.embed.weight");
    assert_eq!(emb.shape, [2, 3]);
    assert_eq!(f32s(emb), [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    assert_eq!(f32s(get(&ts, "model.norm.weight")), [1.0, -2.0, 0.5, 3.25]);
    assert_eq!(i64s(get(&ts, "model.pos")), [-1, 0, 1 << 40]);
    let i32t = get(&ts, "model.i32");
    let i32v: Vec<i32> = i32t
        .data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(
        (i32t.dtype, i32v),
        (RawDtype::I32, vec![i32::MIN, 0, i32::MAX])
    );
    assert_eq!(
        halfs(get(&ts, "model.f16_raw"), RawDtype::F16),
        [-1.5, 0.0, 65504.0]
    );
    assert_eq!(
        halfs(get(&ts, "model.f16_typed"), RawDtype::F16),
        [0.5, -2.0]
    );
    assert_eq!(
        halfs(get(&ts, "model.bf16_typed"), RawDtype::BF16),
        [1.0, -0.5]
    );
    assert_eq!(
        halfs(get(&ts, "model.bf16_raw"), RawDtype::BF16),
        [1.0, -2.0]
    );
    let bytes = |n: &str| {
        let t = get(&ts, n);
        (t.dtype, t.data.clone())
    };
    assert_eq!(bytes("model.i8"), (RawDtype::I8, vec![0x80, 0x7f]));
    assert_eq!(bytes("model.u8"), (RawDtype::U8, vec![0, 255]));
    assert_eq!(
        bytes("model.i16"),
        (RawDtype::I16, vec![0xd4, 0xfe, 0x2c, 0x01])
    );
    assert_eq!(bytes("model.bool"), (RawDtype::Bool, vec![1, 0, 1]));
    let f64t = get(&ts, "model.f64");
    let f64v: Vec<f64> = f64t
        .data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!((f64t.dtype, f64v), (RawDtype::F64, vec![1.0 / 3.0, -2.5]));
    let scalar = get(&ts, "model.scalar");
    assert!(scalar.shape.is_empty());
    assert_eq!(f32s(scalar), [7.0]);
    let empty = get(&ts, "model.empty");
    assert_eq!(
        (empty.shape.as_slice(), empty.data.len()),
        (&[0usize, 3][..], 0)
    );
    assert!(!names_look_lost(&ts));
}

#[test]
fn reads_external_data() {
    let ts = read_onnx(&data("external.onnx")).unwrap();
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["ext.a", "ext.b", "ext.c", "inline"]);
    assert_eq!(ts[0].shape, [2, 2]);
    assert_eq!(f32s(&ts[0]), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(i64s(&ts[1]), [-7, 0, 7]);
    assert_eq!(
        f32s(&ts[2]),
        [0.25, -0.25],
        "no length: read the tensor's size from offset"
    );
    assert_eq!(f32s(&ts[3]), [9.0]);
}

#[test]
fn detects_lost_parameter_names() {
    let lost = read_onnx(&data("torch_names_lost.onnx")).unwrap();
    assert!(lost.iter().any(|t| t.name.starts_with("onnx::MatMul_")));
    assert!(names_look_lost(&lost));
    let err = check_names(Path::new("m.onnx"), &lost).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            OnnxError::NamesLost {
                lost: 3,
                total: 4,
                ..
            }
        ),
        "{err:?}"
    );
    for needle in [
        "m.onnx",
        "`onnx::MatMul_",
        "names were lost",
        "do_constant_folding=False",
    ] {
        assert!(msg.contains(needle), "{needle:?} not in {msg}");
    }

    let kept = read_onnx(&data("torch_names_kept.onnx")).unwrap();
    let names: Vec<&str> = kept.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["norm", "q_proj.weight", "k_proj.weight", "o_proj.weight"]
    );
    assert_eq!(kept[1].shape, [4, 4]);
    assert!(!names_look_lost(&kept));
    check_names(Path::new("m.onnx"), &kept).unwrap();

    let t = |name: &str, dtype| RawTensor {
        name: name.into(),
        dtype,
        shape: vec![2],
        data: vec![],
    };
    let dynamo = [
        t("val_0", RawDtype::F32),
        t("val_12", RawDtype::F16),
        t("norm", RawDtype::F32),
    ];
    assert!(names_look_lost(&dynamo));
    let paths = [
        t("/layers.0/Constant_output_0", RawDtype::F32),
        t("1234", RawDtype::BF16),
    ];
    assert!(names_look_lost(&paths));
    // Generated names on integer constants (shapes, indices) do not count.
    let shapes = [
        t("onnx::Reshape_5", RawDtype::I64),
        t("model.w", RawDtype::F32),
    ];
    assert!(!names_look_lost(&shapes));
    assert!(!names_look_lost(&[t(
        "model.layers.0.val_1",
        RawDtype::F32
    )]));
    assert!(!names_look_lost(&[]));
}

// ---- hand-encoded protobufs ----

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, field << 3 | wire);
}

fn fvarint(out: &mut Vec<u8>, field: u64, v: u64) {
    key(out, field, 0);
    varint(out, v);
}

fn fbytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// TensorProto with name, data_type and unpacked dims, then `extra` fields.
fn tensor(name: &str, dtype: u64, dims: &[i64], extra: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut t = Vec::new();
    dims.iter().for_each(|&d| fvarint(&mut t, 1, d as u64));
    fvarint(&mut t, 2, dtype);
    fbytes(&mut t, 8, name.as_bytes());
    extra(&mut t);
    t
}

fn model(initializers: &[Vec<u8>]) -> Vec<u8> {
    let mut graph = Vec::new();
    fbytes(&mut graph, 1, b"node bytes are skipped");
    initializers.iter().for_each(|t| fbytes(&mut graph, 5, t));
    let mut m = Vec::new();
    fvarint(&mut m, 1, 8);
    fbytes(&mut m, 2, b"tests");
    fbytes(&mut m, 7, &graph);
    m
}

fn external(
    location: &str,
    offset: Option<&str>,
    length: Option<&str>,
) -> impl FnOnce(&mut Vec<u8>) {
    let mut entries = vec![("location", location.to_string())];
    entries.extend(offset.map(|o| ("offset", o.to_string())));
    entries.extend(length.map(|l| ("length", l.to_string())));
    move |t: &mut Vec<u8>| {
        for (k, v) in entries {
            let mut e = Vec::new();
            fbytes(&mut e, 1, k.as_bytes());
            fbytes(&mut e, 2, v.as_bytes());
            fbytes(t, 13, &e);
        }
        fvarint(t, 14, 1);
    }
}

/// Writes `model.onnx` (and `weights.bin` = 0..32 as bytes) into a fresh directory.
fn write_model(bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("weights.bin"),
        (0u8..32).collect::<Vec<u8>>(),
    )
    .unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn read_model(bytes: &[u8]) -> Result<Vec<RawTensor>, OnnxError> {
    let (_dir, path) = write_model(bytes);
    read_onnx(&path)
}

#[test]
fn hand_encoded_variants() {
    // Packed dims, unpacked float_data (fixed32 each), packed int32_data with a negative value.
    let mut t = Vec::new();
    let mut dims = Vec::new();
    varint(&mut dims, 1);
    varint(&mut dims, 2);
    fbytes(&mut t, 1, &dims);
    fvarint(&mut t, 2, 1);
    fbytes(&mut t, 8, b"f");
    for v in [1.5f32, -2.0] {
        key(&mut t, 4, 5);
        t.extend(v.to_le_bytes());
    }
    let i8t = tensor("i8", 3, &[2], |t| {
        let mut packed = Vec::new();
        varint(&mut packed, -5i64 as u64); // int32 negatives are 10-byte sign-extended varints
        varint(&mut packed, 5);
        fbytes(t, 5, &packed);
    });
    let ext = tensor(
        "ext",
        2,
        &[4],
        external("./weights.bin", Some("8"), Some("4")),
    );
    let ts = read_model(&model(&[t, i8t, ext])).unwrap();
    assert_eq!(
        (ts[0].shape.as_slice(), f32s(&ts[0])),
        (&[1usize, 2][..], vec![1.5, -2.0])
    );
    assert_eq!(ts[1].data, [(-5i8) as u8, 5]);
    assert_eq!(
        (ts[2].dtype, ts[2].data.as_slice()),
        (RawDtype::U8, &[8, 9, 10, 11][..])
    );
}

fn expect_err(bytes: &[u8], needle: &str) -> OnnxError {
    match read_model(bytes) {
        Ok(ts) => panic!(
            "expected an error containing {needle:?}, got {} tensors",
            ts.len()
        ),
        Err(e) => {
            assert!(e.to_string().contains(needle), "{needle:?} not in: {e}");
            assert!(e.to_string().contains("model.onnx"), "{e}");
            e
        }
    }
}

#[test]
fn rejects_external_paths_outside_the_model_directory() {
    for location in [
        "../weights.bin",
        "/etc/passwd",
        "sub/../../weights.bin",
        "..\\weights.bin",
        "",
    ] {
        let t = tensor("w", 2, &[4], external(location, None, Some("4")));
        let e = expect_err(&model(&[t]), "relative path inside the model's directory");
        assert!(
            matches!(e, OnnxError::ExternalData { ref tensor, .. } if tensor == "w"),
            "{e:?}"
        );
    }
}

#[test]
fn rejects_bad_external_ranges() {
    let cases = [
        (
            external("weights.bin", Some("30"), Some("4")),
            "past the end of the 32-byte file",
        ),
        (
            external("weights.bin", Some("18446744073709551615"), Some("4")),
            "past the end",
        ),
        (
            external("weights.bin", Some("0"), Some("3")),
            "need 4 bytes",
        ),
        (external("weights.bin", Some("-1"), None), "not a number"),
        (external("missing.bin", None, None), "missing.bin"),
        (external("weights.bin", Some("29"), None), "past the end"),
    ];
    for (ext, needle) in cases {
        expect_err(&model(&[tensor("w", 2, &[4], ext)]), needle);
    }
}

#[test]
fn rejects_inconsistent_tensors() {
    let raw = |n: usize| move |t: &mut Vec<u8>| fbytes(t, 9, &vec![0u8; n]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (tensor("w", 1, &[2, 3], raw(20)), "raw_data has 20 bytes"),
        (tensor("s", 8, &[1], raw(1)), "8 (STRING) is not supported"),
        (tensor("u16", 4, &[1], raw(2)), "UINT16"),
        (tensor("w", 99, &[1], raw(2)), "99 (unknown)"),
        (tensor("w", 1, &[-1, 2], raw(0)), "negative dimension"),
        (tensor("w", 1, &[1 << 62, 1 << 62], raw(0)), "overflow"),
        (tensor("w", 1, &[3], |_| {}), "float_data has 0 values"),
        (
            tensor("w", 3, &[1], |t| fvarint(t, 5, 200)),
            "does not fit I8",
        ),
        (
            tensor("w", 9, &[1], |t| fvarint(t, 5, 2)),
            "does not fit Bool",
        ),
        (
            tensor("w", 10, &[1], |t| fvarint(t, 5, 70000)),
            "does not fit F16",
        ),
        (
            tensor("w", 7, &[2], |t| fvarint(t, 7, 1)),
            "int64_data has 1 values",
        ),
        (tensor("w", 1, &[1], |t| fbytes(t, 3, b"")), "segmented"),
    ];
    for (t, needle) in cases {
        expect_err(&model(&[t]), needle);
    }
    let twice = tensor("dup", 2, &[1], raw(1));
    expect_err(
        &model(&[twice.clone(), twice]),
        "duplicate initializer name",
    );
}

#[test]
fn rejects_malformed_protobuf() {
    let good = model(&[tensor("w", 2, &[2], |t| fbytes(t, 9, &[1, 2]))]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0x08], "truncated varint"),
        (
            vec![
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ],
            "overflows 64 bits",
        ),
        (vec![0x3a, 0x05, 0x01], "runs past the end"),
        (
            vec![0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            "runs past the end",
        ),
        (vec![0x0b], "wire type 3"),
        (vec![0x00, 0x00], "invalid field number 0"),
        (vec![0x38, 0x01], "expected a length-delimited field"),
        (
            model(&[{
                let mut t = Vec::new();
                fbytes(&mut t, 4, &[0, 0, 0]);
                t
            }]),
            "multiple of 4",
        ),
        (
            model(&[vec![0x10, 0x01, 0x42, 0x02, 0xff, 0xfe]]),
            "name is not UTF-8",
        ),
        (good[..good.len() - 1].to_vec(), "runs past the end"),
    ];
    for (bytes, needle) in cases {
        let e = expect_err(&bytes, needle);
        assert!(matches!(e, OnnxError::Proto { .. }), "{e:?}");
    }
}

// ---- truncation and mutation fuzzing ----

fn fuzz_iters() -> usize {
    std::env::var("BITNET_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn fuzz_truncations_and_mutations_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(data("external.bin"), dir.path().join("external.bin")).unwrap();
    let path = dir.path().join("model.onnx");
    for (file, seed) in [
        ("initializers.onnx", 1),
        ("external.onnx", 2),
        ("torch_names_kept.onnx", 3),
    ] {
        let original = std::fs::read(data(file)).unwrap();
        for cut in 0..original.len() {
            std::fs::write(&path, &original[..cut]).unwrap();
            let _ = read_onnx(&path);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut ok = 0;
        let iters = fuzz_iters();
        for iter in 0..iters {
            let mut bytes = original.clone();
            for _ in 0..rng.random_range(1..=4) {
                let i = rng.random_range(0..bytes.len());
                match rng.random_range(0..4) {
                    0 => bytes[i] ^= 1 << rng.random_range(0..8),
                    1 => bytes[i] = rng.random(),
                    2 => bytes.insert(i, rng.random()),
                    _ => bytes[i] = [0x00, 0x7f, 0x80, 0xff][rng.random_range(0..4)],
                }
            }
            if rng.random_range(0..8) == 0 {
                bytes.truncate(rng.random_range(0..bytes.len()));
            }
            std::fs::write(&path, &bytes).unwrap();
            let start = Instant::now();
            ok += read_onnx(&path).is_ok() as usize;
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "{file} iteration {iter}"
            );
        }
        assert!(ok < iters, "{file}: every mutation parsed");
    }
}
