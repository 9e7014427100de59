//! GGUF reader/writer: round trip, one test per hostile-file class, and a mutation test.

use bitnet_formats::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, MetaValueType};
use rand::{RngExt, SeedableRng};
use std::path::Path;

fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", MetaValue::String("bitnet".into()));
    w.set("bitnet.block_count", MetaValue::U32(2));
    w.set("bitnet.rope.freq_base", MetaValue::F32(500000.0));
    w.set("x.a", MetaValue::U8(1));
    w.set("x.b", MetaValue::U8(2));
    w.set(
        "tokenizer.ggml.tokens",
        MetaValue::Array(
            MetaValueType::String,
            vec![MetaValue::String("a".into()), MetaValue::String("b".into())],
        ),
    );
    w.add_tensor("norm.weight", GgmlType::F32, &[4], vec![0u8; 16])
        .unwrap();
    w.add_tensor("w.weight", GgmlType::TQ2_0, &[256, 2], vec![0x55u8; 132])
        .unwrap();
    w.add_tensor("e.weight", GgmlType::I2S, &[128, 2], vec![0x55u8; 64 + 32])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.gguf");
    w.write(&p).unwrap();
    std::fs::read(&p).unwrap()
}

fn parse(b: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(b, Path::new("test.gguf"))
}

fn err(b: Vec<u8>) -> String {
    match parse(b) {
        Ok(_) => panic!("hostile file accepted"),
        Err(e) => e.to_string(),
    }
}

/// Byte position right after the metadata (start of the first tensor info).
fn tensor_infos_start(b: &[u8]) -> usize {
    let f = parse(b.to_vec()).unwrap();
    let mut pos = 24;
    for (k, v) in &f.metadata {
        pos += 8 + k.len() + 4 + encoded_len(v);
    }
    pos
}

fn encoded_len(v: &MetaValue) -> usize {
    match v {
        MetaValue::String(s) => 8 + s.len(),
        MetaValue::Array(_, items) => 12 + items.iter().map(encoded_len).sum::<usize>(),
        MetaValue::U8(_) | MetaValue::I8(_) | MetaValue::Bool(_) => 1,
        MetaValue::U16(_) | MetaValue::I16(_) => 2,
        MetaValue::U32(_) | MetaValue::I32(_) | MetaValue::F32(_) => 4,
        _ => 8,
    }
}

#[test]
fn roundtrip() {
    let b = sample();
    let f = parse(b.clone()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get_str("general.architecture"), Some("bitnet"));
    assert_eq!(f.get_u64("bitnet.block_count"), Some(2));
    assert_eq!(f.get_f64("bitnet.rope.freq_base"), Some(500000.0));
    let t = f.tensor("w.weight").unwrap();
    assert_eq!(
        (t.ggml_type, t.nbytes, t.dims.clone()),
        (GgmlType::TQ2_0, 132, vec![256, 2])
    );
    assert_eq!(f.data(t), &[0x55u8; 132][..]);
    assert_eq!(f.tensor("e.weight").unwrap().nbytes, 96);
}

#[test]
fn truncated_header() {
    let b = sample();
    for cut in [0, 3, 4, 10, 23, 40, b.len() / 2] {
        let e = err(b[..cut].to_vec());
        assert!(
            e.contains("test.gguf") && (e.contains("truncated") || e.contains("invalid")),
            "{cut}: {e}"
        );
    }
}

#[test]
fn huge_counts_and_lengths() {
    let b = sample();
    let mut x = b.clone();
    x[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err(x).contains("tensor count"));
    let mut x = b.clone();
    x[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err(x).contains("metadata count"));
    // First key's string length.
    let mut x = b.clone();
    x[24..32].copy_from_slice(&(u64::MAX - 3).to_le_bytes());
    assert!(err(x).contains("string length"));
    // The token array's element count (find the array header: type 8, then count 2).
    let key = b"tokenizer.ggml.tokens";
    let at = b.windows(key.len()).position(|w| w == key).unwrap() + key.len() + 4 + 4;
    let mut x = b.clone();
    x[at..at + 8].copy_from_slice(&(1u64 << 50).to_le_bytes());
    assert!(err(x).contains("cannot fit"), "array count");
    // Dimensions that overflow.
    let ti = tensor_infos_start(&b);
    let name_len = "norm.weight".len();
    let mut x = b.clone();
    x[ti + 8 + name_len..ti + 8 + name_len + 4].copy_from_slice(&9u32.to_le_bytes());
    assert!(err(x).contains("dimensions"));
}

#[test]
fn offsets_outside_the_file() {
    let b = sample();
    let ti = tensor_infos_start(&b);
    // norm.weight: name, n_dims, 1 dim, type, offset.
    let off_at = ti + 8 + "norm.weight".len() + 4 + 8 + 4;
    let mut x = b.clone();
    x[off_at..off_at + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
    assert!(err(x).contains("outside the file"));
    let mut x = b.clone();
    x[off_at..off_at + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(err(x).contains("outside the file"));
    let mut x = b.clone();
    x[off_at..off_at + 8].copy_from_slice(&7u64.to_le_bytes());
    assert!(err(x).contains("not aligned"));
}

#[test]
fn size_not_matching_type() {
    let b = sample();
    let ti = tensor_infos_start(&b);
    let second = ti + 8 + "norm.weight".len() + 4 + 8 + 4 + 8;
    // w.weight: ne0 256 → 100 (not a whole TQ2_0 block).
    let dim_at = second + 8 + "w.weight".len() + 4;
    let mut x = b.clone();
    x[dim_at..dim_at + 8].copy_from_slice(&100u64.to_le_bytes());
    let e = err(x);
    assert!(e.contains("`w.weight`") && e.contains("TQ2_0"), "{e}");
    // Writer refuses a wrong byte count.
    let mut w = GgufWriter::new();
    assert!(w
        .add_tensor("t", GgmlType::Q8_0, &[32], vec![0; 33])
        .is_err());
}

#[test]
fn unknown_type_id() {
    let b = sample();
    let ti = tensor_infos_start(&b);
    let type_at = ti + 8 + "norm.weight".len() + 4 + 8;
    let mut x = b.clone();
    x[type_at..type_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = err(x);
    assert!(
        e.contains("unknown GGML type id 99")
            && e.contains("`norm.weight`")
            && e.contains("I2_S (36)"),
        "{e}"
    );
}

#[test]
fn duplicate_names() {
    let b = sample();
    let ti = tensor_infos_start(&b);
    // Rename "e.weight" to "w.weight" (same length).
    let at = b[ti..].windows(8).position(|w| w == b"e.weight").unwrap() + ti;
    let mut x = b.clone();
    x[at..at + 8].copy_from_slice(b"w.weight");
    assert!(err(x).contains("duplicate tensor `w.weight`"));
    // Duplicate metadata key.
    let at = b.windows(3).position(|w| w == b"x.b").unwrap();
    let mut x = b.clone();
    x[at..at + 3].copy_from_slice(b"x.a");
    assert!(err(x).contains("duplicate metadata key `x.a`"));
    let mut w = GgufWriter::new();
    w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]).unwrap();
    assert!(w.add_tensor("t", GgmlType::F32, &[1], vec![0; 4]).is_err());
}

#[test]
fn bad_magic_version_alignment() {
    let b = sample();
    let mut x = b.clone();
    x[0] = b'X';
    assert!(err(x).contains("magic"));
    let mut x = b.clone();
    x[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(err(x).contains("big-endian"));
    let mut w = GgufWriter::new();
    w.set("general.alignment", MetaValue::U32(24));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.gguf");
    w.write(&p).unwrap();
    assert!(err(std::fs::read(&p).unwrap()).contains("alignment"));
}

#[test]
fn random_mutations_never_panic() {
    let b = sample();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    let start = std::time::Instant::now();
    let mut accepted = 0;
    for i in 0..5000 {
        let mut x = b.clone();
        let flips = 1 + i % 8;
        for _ in 0..flips {
            let at = rng.random_range(0..x.len());
            x[at] = rng.random();
        }
        if i % 5 == 0 {
            let cut = rng.random_range(0..x.len());
            x.truncate(cut);
        }
        if let Ok(f) = parse(x) {
            accepted += 1;
            for t in f.tensors.clone() {
                let _ = f.data(&t).len();
            }
        }
    }
    assert!(
        accepted > 0,
        "some mutations (in tensor data) must still parse"
    );
    assert!(start.elapsed().as_secs() < 30);
}

/// A converted tensor's pages can leave the process (`release`): the bytes read afterwards
/// are the file's, unchanged; a file read into memory releases nothing.
#[test]
fn released_tensor_pages_read_back_unchanged() {
    let mut w = GgufWriter::new();
    w.set("general.architecture", MetaValue::String("bitnet".into()));
    // 64 KiB of F32 (16 pages) with a pattern, between two small tensors.
    let big: Vec<u8> = (0..65536u32).map(|i| (i * 7 % 251) as u8).collect();
    w.add_tensor("a.weight", GgmlType::F32, &[3], vec![1u8; 12])
        .unwrap();
    w.add_tensor("big.weight", GgmlType::F32, &[16384], big.clone())
        .unwrap();
    w.add_tensor("z.weight", GgmlType::F32, &[5], vec![2u8; 20])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.gguf");
    w.write(&p).unwrap();
    let f = GgufFile::open(&p).unwrap();
    let t = f.tensor("big.weight").unwrap().clone();
    assert_eq!(f.data(&t), &big[..]);
    let released = f.release(&t);
    if cfg!(unix) {
        assert!(
            released >= 60 * 1024,
            "whole pages inside the tensor: {released}"
        );
    }
    assert_eq!(f.data(&t), &big[..], "read back after release");
    assert_eq!(f.data(f.tensor("a.weight").unwrap()), &[1u8; 12]);
    assert_eq!(f.data(f.tensor("z.weight").unwrap()), &[2u8; 20]);
    let mem = GgufFile::from_bytes(std::fs::read(&p).unwrap(), &p).unwrap();
    assert_eq!(mem.release(&t), 0);
    assert_eq!(mem.data(&t), &big[..]);
}
