//! `convert`: the fixture's HF checkpoint written as each GGUF type gives the peers' tensor
//! bytes exactly; relu² fixtures converted to each type still meet their references; HF → GGUF
//! → HF reproduces the packed weights and scales.

use bitnet_engine::compare::{std_dev, LogitStats, LogitsRecord};
use bitnet_engine::convert::gguf_out::{write_gguf, GgufOptions};
use bitnet_engine::convert::hf_out::write_hf;
use bitnet_engine::convert::Parts;
use bitnet_engine::generate::greedy_with_logits;
use bitnet_engine::model::AbsMean;
use bitnet_engine::test_support::{fixture_models, fixtures_dir, read_tensors};
use bitnet_engine::Model;
use bitnet_formats::gguf::{GgmlType, GgufFile};
use std::path::Path;

fn convert(src: &Path, out: &Path, ternary: GgmlType, embedding: GgmlType) -> usize {
    convert_with(src, out, ternary, embedding, AbsMean::Exact)
}

fn convert_with(
    src: &Path,
    out: &Path,
    ternary: GgmlType,
    embedding: GgmlType,
    mean: AbsMean,
) -> usize {
    let parts = Parts::open_with(src, mean).unwrap();
    let r = write_gguf(
        &parts,
        GgufOptions { ternary, embedding },
        out,
        |_, _, _| {},
    )
    .unwrap();
    assert_eq!(r.verified, parts.n_ternary());
    r.fallbacks.len()
}

#[test]
fn hf_to_gguf_reproduces_the_peers_bytes() {
    let fx = fixtures_dir().join("bitnet-silu-gguf");
    let tmp = tempfile::tempdir().unwrap();
    for (file, ternary, embedding) in [
        ("f16.gguf", GgmlType::F16, GgmlType::F16),
        ("tq2_0.gguf", GgmlType::TQ2_0, GgmlType::F16),
        ("tq1_0.gguf", GgmlType::TQ1_0, GgmlType::F16),
        ("tq2_0_default.gguf", GgmlType::TQ2_0, GgmlType::Q6K),
        ("i2_s.gguf", GgmlType::I2S, GgmlType::F16),
    ] {
        let out = tmp.path().join(file);
        // The peers' Python converters reduce mean|W| in float32 torch; the fixture was made
        // with 2 torch threads (the scales of i2_s.gguf need exactly that order).
        assert_eq!(
            convert_with(&fx, &out, ternary, embedding, AbsMean::Torch { threads: 2 }),
            0
        );
        let ours = GgufFile::open(&out).unwrap();
        let peer = GgufFile::open(&fx.join("gguf").join(file)).unwrap();
        assert_eq!(ours.tensors.len(), peer.tensors.len(), "{file}");
        let mut mismatched = Vec::new();
        for t in &peer.tensors {
            let o = ours
                .tensor(&t.name)
                .unwrap_or_else(|| panic!("{file}: no {}", t.name));
            assert_eq!(
                (o.ggml_type, &o.dims),
                (t.ggml_type, &t.dims),
                "{file} {}",
                t.name
            );
            // I2_S: codes and the f32 scale; bitnet.cpp leaves the other 28 bytes of the
            // 32-byte tail uninitialized (they differ between its tensors), we write zeros.
            let n = if t.ggml_type == GgmlType::I2S {
                t.nbytes - 28
            } else {
                t.nbytes
            };
            if ours.data(o)[..n] != peer.data(t)[..n] {
                let diff = ours.data(o)[..n]
                    .iter()
                    .zip(&peer.data(t)[..n])
                    .filter(|(a, b)| a != b)
                    .count();
                mismatched.push(format!(
                    "{} ({} of {} bytes differ)",
                    t.name, diff, t.nbytes
                ));
            }
        }
        assert!(mismatched.is_empty(), "{file}: {mismatched:?}");
        if ternary == GgmlType::I2S {
            // With the correctly rounded mean instead, the codes are still identical and each
            // scale is within two ulps (torch's float32 sum is off by up to an ulp).
            let exact = tmp.path().join("exact-i2_s.gguf");
            convert(&fx, &exact, ternary, embedding);
            let e = GgufFile::open(&exact).unwrap();
            for t in peer.tensors.iter().filter(|t| t.ggml_type == GgmlType::I2S) {
                let n = t.nbytes - 32;
                let (a, b) = (e.data(e.tensor(&t.name).unwrap()), peer.data(t));
                assert_eq!(a[..n], b[..n], "{}", t.name);
                let f = |d: &[u8]| f32::from_le_bytes([d[n], d[n + 1], d[n + 2], d[n + 3]]);
                assert!(f(a).to_bits().abs_diff(f(b).to_bits()) <= 2, "{}", t.name);
            }
        }
        for key in [
            "general.architecture",
            "bitnet.block_count",
            "bitnet.attention.head_count_kv",
            "tokenizer.ggml.model",
        ] {
            assert_eq!(ours.get(key), peer.get(key), "{file}: {key}");
        }
        assert_eq!(
            ours.get("tokenizer.ggml.tokens"),
            peer.get("tokenizer.ggml.tokens"),
            "{file}: tokens"
        );
        assert_eq!(
            ours.get("tokenizer.ggml.scores"),
            peer.get("tokenizer.ggml.scores"),
            "{file}: scores"
        );
        assert_eq!(
            ours.get("tokenizer.ggml.token_type"),
            peer.get("tokenizer.ggml.token_type"),
            "{file}: types"
        );
    }
}

#[test]
fn relu2_fixtures_converted_to_each_type_meet_their_references() {
    let tmp = tempfile::tempdir().unwrap();
    for dir in fixture_models()
        .into_iter()
        .filter(|d| !d.ends_with("bitnet-silu-gguf"))
    {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for (ternary, embedding) in [
            (GgmlType::I2S, GgmlType::F16),
            (GgmlType::TQ2_0, GgmlType::F16),
            (GgmlType::TQ1_0, GgmlType::F16),
            (GgmlType::F16, GgmlType::F16),
        ] {
            let out = tmp.path().join(format!("{name}-{}.gguf", ternary.name()));
            convert(&dir, &out, ternary, embedding);
            let model = Model::load(&out).unwrap();
            for i in 0..3 {
                let r = LogitsRecord::read(&dir.join("reference.safetensors"), &format!("p{i}."))
                    .unwrap();
                let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
                let (logits, _, _) = greedy_with_logits(&model, &ids, 0).unwrap();
                let st = LogitStats::compute(&r.logits, &logits, r.vocab, std_dev(&r.logits));
                assert!(st.passes(), "{name} as {}: p{i} {st:?}", ternary.name());
            }
        }
    }
}

#[test]
fn hf_gguf_hf_round_trip_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    // The 2B-4T convention (autobitlinear: bf16 weight_scale = mean|W|) survives every type
    // exactly: f16 and f32 hold any bf16 scale.
    for dir in fixture_models()
        .into_iter()
        .filter(|d| d.to_string_lossy().contains("packed"))
    {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for ternary in [GgmlType::I2S, GgmlType::TQ2_0, GgmlType::F16] {
            let g = tmp.path().join(format!("{name}-{}.gguf", ternary.name()));
            convert(&dir, &g, ternary, GgmlType::F16);
            let back = tmp.path().join(format!("{name}-{}-hf", ternary.name()));
            write_hf(&Parts::open(&g).unwrap(), &back).unwrap();
            let orig = read_tensors(&dir.join("model.safetensors"));
            let new = read_tensors(&back.join("model.safetensors"));
            for t in orig.iter().filter(|t| t.name.ends_with("proj.weight")) {
                let n = new.iter().find(|x| x.name == t.name).unwrap();
                assert_eq!(n.data, t.data, "{name} {}: packed weights", t.name);
            }
            for t in orig.iter().filter(|t| t.name.ends_with("weight_scale")) {
                let n = new.iter().find(|x| x.name == t.name).unwrap();
                let f = |x: &bitnet_engine::test_support::OwnedTensor| -> f32 {
                    match x.dtype {
                        safetensors::Dtype::BF16 => {
                            half::bf16::from_le_bytes([x.data[0], x.data[1]]).to_f32()
                        }
                        _ => f32::from_le_bytes([x.data[0], x.data[1], x.data[2], x.data[3]]),
                    }
                };
                assert_eq!((n.dtype, f(n)), (t.dtype, f(t)), "{name} {}", t.name);
            }
            // And the re-exported checkpoint still meets the reference.
            let model = Model::load(&back).unwrap();
            let r = LogitsRecord::read(&dir.join("reference.safetensors"), "p0.").unwrap();
            let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
            let (logits, _, _) = greedy_with_logits(&model, &ids, 0).unwrap();
            let st = LogitStats::compute(&r.logits, &logits, r.vocab, std_dev(&r.logits));
            assert!(st.passes(), "{name} round trip: {st:?}");
        }
    }
}

#[test]
fn pytorch_and_onnx_inputs_convert_like_the_hf_checkpoint() {
    let data = bitnet_engine::test_support::repo_fixtures_dir().join("torch-onnx");
    let tmp = tempfile::tempdir().unwrap();
    for (fixture, file) in [
        ("bitnet-tiny-packed", "tiny-packed.bin"),
        ("bitnet-tiny-master", "tiny-master.bin"),
        ("bitnet-tiny-master", "tiny-master.onnx"),
    ] {
        let src = fixture_models()
            .into_iter()
            .find(|d| d.ends_with(fixture))
            .unwrap();
        let dir = tmp.path().join(file.replace('.', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in [
            "config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            std::fs::copy(src.join(f), dir.join(f)).unwrap();
        }
        let input = dir.join(if file.ends_with(".onnx") {
            "model.onnx"
        } else {
            "pytorch_model.bin"
        });
        std::fs::copy(data.join(file), &input).unwrap();
        let ours = tmp.path().join(format!("{file}.gguf"));
        let direct = tmp.path().join(format!("{file}-direct.gguf"));
        convert(&input, &ours, GgmlType::I2S, GgmlType::F16);
        convert(&src, &direct, GgmlType::I2S, GgmlType::F16);
        let (a, b) = (
            GgufFile::open(&ours).unwrap(),
            GgufFile::open(&direct).unwrap(),
        );
        for t in &b.tensors {
            assert_eq!(
                a.data(a.tensor(&t.name).unwrap()),
                b.data(t),
                "{file}: {}",
                t.name
            );
        }
        assert_eq!(
            a.get("tokenizer.ggml.tokens"),
            b.get("tokenizer.ggml.tokens")
        );
    }
    // A pickle that asks for os.system is refused, naming the global; nothing runs.
    let evil = bitnet_engine::test_support::repo_fixtures_dir()
        .join("../../crates/bitnet-formats/tests/data/malicious.pt");
    let dir = tmp.path().join("evil");
    std::fs::create_dir_all(&dir).unwrap();
    let src = fixture_models()
        .into_iter()
        .find(|d| d.ends_with("bitnet-tiny-master"))
        .unwrap();
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(&evil, dir.join("pytorch_model.bin")).unwrap();
    let e = Parts::open(&dir.join("pytorch_model.bin"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("system") && e.contains("pytorch_model.bin"),
        "{e}"
    );
}
