//! PyTorch checkpoint reader: real `torch.save` files (tests/data/make_pickle_data.py),
//! hand-built hostile pickles, and mutation fuzzing.

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitnet_formats::pickle::{read_pytorch, read_pytorch_reader, PickleError};
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

fn check_state_dict(ts: &[RawTensor]) {
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    let expected = [
        "f32",
        "f16",
        "bf16",
        "f64",
        "i64",
        "i32",
        "i16",
        "i8",
        "u8",
        "bool",
        "transposed",
        "base",
        "slice",
        "strided",
        "expanded",
        "scalar",
        "empty",
        "param",
    ];
    assert_eq!(names, expected, "state-dict order is kept");
    for t in ts {
        let numel: usize = t.shape.iter().product();
        assert_eq!(t.data.len(), numel * t.dtype.size(), "{}", t.name);
    }
    let f32t = get(ts, "f32");
    assert_eq!(f32t.shape, [2, 3]);
    assert_eq!(f32s(f32t), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let f16t = get(ts, "f16");
    assert_eq!(f16t.dtype, RawDtype::F16);
    let f16v: Vec<f32> = f16t
        .data
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(f16v, [-1.5, -0.5, 0.5, 1.5]);
    let bf = get(ts, "bf16");
    assert_eq!(bf.dtype, RawDtype::BF16);
    let bfv: Vec<f32> = bf
        .data
        .chunks_exact(2)
        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    assert_eq!(bfv, [0.0, 0.25, 0.5, 0.75]);
    let f64t = get(ts, "f64");
    assert_eq!(f64t.dtype, RawDtype::F64);
    let f64v: Vec<f64> = f64t
        .data
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(f64v, [0.0, 1.0 / 3.0, 2.0 / 3.0]);
    assert_eq!(i64s(get(ts, "i64")), [-3, -2, -1, 0, 1, 2]);
    let i32t = get(ts, "i32");
    assert_eq!(i32t.dtype, RawDtype::I32);
    let i32v: Vec<i32> = i32t
        .data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(i32v, [i32::MIN, 0, i32::MAX]);
    let i16t = get(ts, "i16");
    assert_eq!(
        (i16t.dtype, i16t.data.as_slice()),
        (RawDtype::I16, &[0xd4, 0xfe, 0x2c, 0x01][..])
    );
    let i8t = get(ts, "i8");
    assert_eq!(
        (i8t.dtype, i8t.data.as_slice()),
        (RawDtype::I8, &[0x80, 0x7f][..])
    );
    let u8t = get(ts, "u8");
    assert_eq!(
        (u8t.dtype, u8t.data.as_slice()),
        (RawDtype::U8, &[0, 255][..])
    );
    let b = get(ts, "bool");
    assert_eq!(
        (b.dtype, b.data.as_slice()),
        (RawDtype::Bool, &[1, 0, 1][..])
    );
    // Transposed view [3, 2] with strides [1, 3] becomes contiguous.
    let tr = get(ts, "transposed");
    assert_eq!(tr.shape, [3, 2]);
    assert_eq!(f32s(tr), [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    // Three views of one storage.
    assert_eq!(i64s(get(ts, "base")), (0..10).collect::<Vec<i64>>());
    assert_eq!(i64s(get(ts, "slice")), [2, 3, 4, 5]);
    let st = get(ts, "strided");
    assert_eq!(
        (st.shape.as_slice(), i64s(st)),
        (&[2usize, 2][..], vec![1, 3, 6, 8])
    );
    assert_eq!(f32s(get(ts, "expanded")), [7.0, 7.0, 7.0]);
    let sc = get(ts, "scalar");
    assert!(sc.shape.is_empty());
    assert_eq!(f32s(sc), [3.5]);
    let e = get(ts, "empty");
    assert_eq!((e.shape.as_slice(), e.data.len()), (&[0usize, 4][..], 0));
    assert_eq!(f32s(get(ts, "param")), [0.0, 1.0, 2.0]);
}

#[test]
fn reads_state_dict_with_all_dtypes_and_views() {
    check_state_dict(&read_pytorch(&data("state_dict.pt")).unwrap());
}

#[test]
fn reads_protocol5_pickle() {
    // FRAME, MEMOIZE, SHORT_BINUNICODE and STACK_GLOBAL instead of the protocol-2 opcodes.
    check_state_dict(&read_pytorch(&data("protocol5.pt")).unwrap());
}

#[test]
fn picks_the_wrapped_state_dict() {
    let ts = read_pytorch(&data("wrapped.pt")).unwrap();
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["encoder.w", "head.bias"]);
    assert_eq!(f32s(&ts[0]), [0.0, 1.0, 2.0, 3.0]);
    assert_eq!(ts[0].shape, [2, 2]);
    assert_eq!(f32s(&ts[1]), [-1.0, 1.0]);
}

#[test]
fn flattens_nested_dicts_and_lists() {
    let ts = read_pytorch(&data("nested.pt")).unwrap();
    let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["encoder.w", "decoder.layers.0", "decoder.layers.1"]);
    assert_eq!(f32s(&ts[2]), [2.0]);
}

#[test]
fn reads_module_state_dict_with_metadata() {
    let ts = read_pytorch(&data("module_state.pt")).unwrap();
    assert_eq!(ts.len(), 2);
    assert_eq!(
        (ts[0].name.as_str(), ts[0].shape.as_slice()),
        ("weight", &[2usize, 3][..])
    );
    assert_eq!(f32s(&ts[0]), [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(f32s(&ts[1]), [0.5, -0.5]);
}

#[test]
fn reads_archive_prefix_from_buffer_save() {
    let ts = read_pytorch(&data("buffer_prefix.pt")).unwrap();
    assert_eq!(f32s(get(&ts, "w")), [1.0, 2.0]);
}

#[test]
fn rejects_os_system_pickle() {
    match read_pytorch(&data("malicious.pt")) {
        Err(e @ PickleError::ForbiddenGlobal { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("posix.system"), "{msg}");
            assert!(msg.contains("malicious.pt"), "{msg}");
            assert!(msg.contains("nothing was executed"), "{msg}");
        }
        other => panic!("expected ForbiddenGlobal, got {other:?}"),
    }
}

#[test]
fn unsupported_dtype_names_tensor() {
    let err = read_pytorch(&data("uint16.pt")).unwrap_err();
    assert!(
        matches!(err, PickleError::Tensor { ref tensor, .. } if tensor == "u"),
        "{err:?}"
    );
    assert!(err.to_string().contains("uint16"), "{err}");
}

#[test]
fn legacy_format_has_clear_error() {
    let err = read_pytorch(&data("legacy.pt")).unwrap_err();
    assert!(err.to_string().contains("legacy"), "{err}");
}

// ---- hand-built pickles ----

fn p_str(p: &mut Vec<u8>, s: &str) {
    p.push(b'X');
    p.extend((s.len() as u32).to_le_bytes());
    p.extend(s.as_bytes());
}

fn p_int(p: &mut Vec<u8>, v: i64) {
    p.push(0x8a);
    p.push(8);
    p.extend(v.to_le_bytes());
}

fn p_global(p: &mut Vec<u8>, module: &str, name: &str) {
    p.push(b'c');
    p.extend(format!("{module}\n{name}\n").bytes());
}

fn p_ints(p: &mut Vec<u8>, vs: &[i64]) {
    p.push(b'(');
    vs.iter().for_each(|&v| p_int(p, v));
    p.push(b't');
}

/// `{"w": _rebuild_tensor_v2(storage(class, "0", numel), offset, shape, stride, False, OrderedDict())}`.
fn tensor_pickle(class: &str, numel: i64, offset: i64, shape: &[i64], stride: &[i64]) -> Vec<u8> {
    let mut p = vec![0x80, 2, b'}'];
    p_str(&mut p, "w");
    p_global(&mut p, "torch._utils", "_rebuild_tensor_v2");
    p.extend(b"((");
    p_str(&mut p, "storage");
    p_global(&mut p, "torch", class);
    p_str(&mut p, "0");
    p_str(&mut p, "cpu");
    p_int(&mut p, numel);
    p.extend(b"tQ");
    p_int(&mut p, offset);
    p_ints(&mut p, shape);
    p_ints(&mut p, stride);
    p.push(0x89);
    p_global(&mut p, "collections", "OrderedDict");
    p.extend(b")RtRs.");
    p
}

fn make_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn read_bytes(bytes: Vec<u8>) -> Result<Vec<RawTensor>, PickleError> {
    read_pytorch_reader(Cursor::new(bytes), Path::new("mem.pt"))
}

fn read_pickle(pkl: &[u8], storage: &[u8]) -> Result<Vec<RawTensor>, PickleError> {
    read_bytes(make_zip(&[
        ("archive/data.pkl", pkl),
        ("archive/data/0", storage),
    ]))
}

fn f32_bytes(vs: &[f32]) -> Vec<u8> {
    vs.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn hand_built_tensor_reads() {
    let storage = f32_bytes(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    let ts = read_pickle(
        &tensor_pickle("FloatStorage", 6, 1, &[2, 2], &[1, 2]),
        &storage,
    )
    .unwrap();
    assert_eq!(f32s(&ts[0]), [1.0, 3.0, 2.0, 4.0]);
}

#[test]
fn rebuild_tensor_v3_with_untyped_storage() {
    // What torch emits for dtypes without a legacy storage class, here with a supported dtype.
    let mut p = vec![0x80, 2, b'}'];
    p_str(&mut p, "h");
    p_global(&mut p, "torch._utils", "_rebuild_tensor_v3");
    p.extend(b"((");
    p_str(&mut p, "storage");
    p_global(&mut p, "torch.storage", "UntypedStorage");
    p_str(&mut p, "0");
    p_str(&mut p, "cpu");
    p_int(&mut p, 6);
    p.extend(b"tQ");
    p_int(&mut p, 1);
    p_ints(&mut p, &[2]);
    p_ints(&mut p, &[1]);
    p.push(0x89);
    p.extend(b"}");
    p_global(&mut p, "torch", "float16");
    p.extend(b"tRs.");
    let storage: Vec<u8> = [1.0f32, 2.0, 3.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let ts = read_pickle(&p, &storage).unwrap();
    assert_eq!(
        (ts[0].dtype, ts[0].shape.as_slice()),
        (RawDtype::F16, &[2usize][..])
    );
    assert_eq!(ts[0].data, storage[2..]);
}

fn expect_err(r: Result<Vec<RawTensor>, PickleError>, needle: &str) -> PickleError {
    match r {
        Ok(ts) => panic!(
            "expected an error containing {needle:?}, got {} tensors",
            ts.len()
        ),
        Err(e) => {
            assert!(e.to_string().contains(needle), "{e}");
            assert!(e.to_string().contains("mem.pt"), "{e}");
            e
        }
    }
}

#[test]
fn rejects_other_dangerous_globals() {
    let mut p = vec![0x80, 4];
    p.push(0x8c);
    p.push(8);
    p.extend(b"builtins");
    p.push(0x8c);
    p.push(4);
    p.extend(b"eval");
    p.push(0x93);
    p.extend(b"X\x02\0\0\x001+\x85R.");
    let e = expect_err(read_pickle(&p, &[]), "builtins.eval");
    assert!(
        matches!(e, PickleError::ForbiddenGlobal { offset: 18, .. }),
        "{e:?}"
    );
    for (m, n) in [
        ("subprocess", "Popen"),
        ("os", "system"),
        ("torch", "load"),
        ("__main__", "Net"),
    ] {
        let mut p = vec![0x80, 2];
        p_global(&mut p, m, n);
        p.extend(b")R.");
        expect_err(read_pickle(&p, &[]), &format!("`{m}.{n}`"));
    }
}

#[test]
fn rejects_bad_views() {
    let storage = f32_bytes(&[0.0; 6]);
    // (storage class, storage numel, offset, shape, stride, expected error text)
    type Case = (
        &'static str,
        i64,
        i64,
        &'static [i64],
        &'static [i64],
        &'static str,
    );
    let cases: [Case; 7] = [
        ("FloatStorage", 6, 3, &[2, 2], &[2, 1], "past the storage"),
        ("FloatStorage", 6, 0, &[7], &[1], "past the storage"),
        ("FloatStorage", 6, 0, &[2, 2], &[-1, 1], "negative"),
        ("FloatStorage", 6, -1, &[2], &[1], "negative"),
        ("FloatStorage", 6, 0, &[4, 2], &[i64::MAX, 1], "overflows"),
        ("FloatStorage", 6, 0, &[1 << 40], &[0], "budget"),
        ("FloatStorage", 7, 0, &[2], &[1], "24 bytes"),
    ];
    for (class, numel, offset, shape, stride, needle) in cases {
        expect_err(
            read_pickle(
                &tensor_pickle(class, numel, offset, shape, stride),
                &storage,
            ),
            needle,
        );
    }
    let e = expect_err(
        read_pickle(
            &tensor_pickle("ComplexFloatStorage", 3, 0, &[3], &[1]),
            &storage,
        ),
        "not supported",
    );
    assert!(
        matches!(e, PickleError::Tensor { ref tensor, .. } if tensor == "w"),
        "{e:?}"
    );
}

#[test]
fn rejects_hostile_streams() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"\x80\x02X\xff\xff\xff\xff".to_vec(), "1 MiB limit"),
        (
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
            "1 MiB limit",
        ),
        (b"\x80\x02X\x10\0\0\0abc".to_vec(), "truncated"),
        (
            b"\x80\x02]r\xff\xff\xff\xffj\xfe\xff\xff\xff.".to_vec(),
            "memo key 4294967294",
        ),
        ([&[0x80, 2][..], &[b'('; 100]].concat(), "MARKs nested"),
        (b"\x80\x02}".to_vec(), "no STOP"),
        (b"\x80\x02.".to_vec(), "empty stack"),
        (b"\x80\x02)u.".to_vec(), "no MARK"),
        (b"\x80\x02(s.".to_vec(), "underflow"),
        (b"\x80\x09}.".to_vec(), "protocol 9"),
        (b"\x80\x02I1\n.".to_vec(), "not supported"),
        (b"\x80\x02\x8a\x09123456789.".to_vec(), "64 bits"),
        (b"\x80\x02]X\x01\0\0\0kK\x01s.".to_vec(), "not a dict"),
        (b"\x80\x02K\x01.".to_vec(), "top-level object is not a dict"),
        (b"\x80\x02cos\nsystem".to_vec(), "global name line"),
        // 3 M empty tuples from a 3 MB pickle: over the 8 x file size + 64 MiB budget.
        (
            [&[0x80, 2][..], &[b')'; 3_000_000]].concat(),
            "allocation budget",
        ),
        (b"\x80\x02cbuiltins\neval\n".to_vec(), "`builtins.eval`"),
        // A list containing itself: flattening stops at the depth limit.
        (
            b"\x80\x02}X\x01\0\0\0a]q\x00h\x00as.".to_vec(),
            "nested deeper",
        ),
        // A list containing itself twice (2^64 paths): the visit cap stops it quickly.
        (
            b"\x80\x02}X\x01\0\0\0a]q\x00(h\x00h\x00es.".to_vec(),
            "shared too often",
        ),
    ];
    for (pkl, needle) in cases {
        expect_err(read_pickle(&pkl, &[]), needle);
    }
}

#[test]
fn rejects_bad_archives() {
    let pkl = tensor_pickle("FloatStorage", 1, 0, &[1], &[1]);
    let one = f32_bytes(&[1.0]);
    let big = make_zip(&[
        ("a/byteorder", b"big"),
        ("a/data.pkl", &pkl),
        ("a/data/0", &one),
    ]);
    expect_err(read_bytes(big), "little-endian");
    expect_err(read_bytes(make_zip(&[("a/data.pkl", &pkl)])), "a/data/0");
    expect_err(read_bytes(make_zip(&[("a/other", &pkl)])), "data.pkl");
    expect_err(read_bytes(b"not a zip at all".to_vec()), "zip");
    let ok = make_zip(&[
        ("a/byteorder", b"little"),
        ("a/data.pkl", &pkl),
        ("a/data/0", &one),
    ]);
    assert_eq!(f32s(&read_bytes(ok).unwrap()[0]), [1.0]);
}

// ---- mutation fuzzing ----

fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut buf = Vec::new();
            f.read_to_end(&mut buf).unwrap();
            (f.name().unwrap().to_string(), buf)
        })
        .collect()
}

fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..=4) {
        let i = rng.random_range(0..bytes.len());
        match rng.random_range(0..5) {
            0 => bytes[i] ^= 1 << rng.random_range(0..8),
            1 => bytes[i] = rng.random(),
            2 => bytes[i] = [0x00, 0x7f, 0x80, 0xff][rng.random_range(0..4)],
            3 => bytes.insert(i, rng.random()),
            _ => {
                bytes.remove(i);
            }
        }
        if bytes.is_empty() {
            return;
        }
    }
    if rng.random_range(0..8) == 0 {
        bytes.truncate(rng.random_range(0..bytes.len()));
    }
}

/// Iterations per fuzz target: 3000, or `BITNET_FUZZ_ITERS` for longer local runs.
fn fuzz_iters() -> usize {
    std::env::var("BITNET_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn timed(what: &str, f: impl FnOnce() -> Result<Vec<RawTensor>, PickleError>) {
    let start = Instant::now();
    let _ = f();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{what} took {:?}",
        start.elapsed()
    );
}

#[test]
fn fuzz_whole_file_mutations_never_panic() {
    let original = std::fs::read(data("state_dict.pt")).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
    for iter in 0..fuzz_iters() {
        let mut bytes = original.clone();
        mutate(&mut rng, &mut bytes);
        timed(&format!("iteration {iter}"), || read_bytes(bytes));
    }
    for cut in (0..original.len()).step_by(7) {
        let bytes = original[..cut].to_vec();
        timed(&format!("truncation at {cut}"), || read_bytes(bytes));
    }
}

#[test]
fn fuzz_pickle_mutations_never_panic() {
    for (file, seed) in [
        ("state_dict.pt", 42),
        ("protocol5.pt", 43),
        ("wrapped.pt", 44),
    ] {
        fuzz_pickle(file, seed);
    }
}

/// Mutates data.pkl (and sometimes a storage) inside a freshly written zip, so the zip CRC
/// checks pass and the unpickler itself sees the damage.
fn fuzz_pickle(file: &str, seed: u64) {
    let original = entries(&std::fs::read(data(file)).unwrap());
    let pkl_index = original
        .iter()
        .position(|(n, _)| n.ends_with("data.pkl"))
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut ok = 0;
    let mut kinds = std::collections::BTreeMap::new();
    let iters = fuzz_iters();
    for iter in 0..iters {
        let mut files = original.clone();
        let target = if rng.random_range(0..10) == 0 {
            rng.random_range(0..files.len())
        } else {
            pkl_index
        };
        if !files[target].1.is_empty() {
            mutate(&mut rng, &mut files[target].1);
        }
        let refs: Vec<(&str, &[u8])> = files
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        let zip = make_zip(&refs);
        let start = Instant::now();
        match read_bytes(zip) {
            Ok(_) => ok += 1,
            Err(e) => *kinds.entry(format!("{e:?}")[..6].to_string()).or_insert(0) += 1,
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{file} iteration {iter}"
        );
    }
    eprintln!("{file}: {ok} parsed, errors by kind {kinds:?}");
    // Some mutations (e.g. inside a float payload or a name) still parse.
    assert!(
        ok > 0 && ok < iters,
        "{file}: {ok} of {iters} mutated pickles parsed"
    );
}
