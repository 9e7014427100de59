//! Every GGUF file of `bitnet-silu-gguf/gguf/` loads and meets the README criteria against the
//! reference its MANIFEST names for that file.

use bitnet_engine::compare::LogitsRecord;
use bitnet_engine::test_support::{assert_meets_reference, fixtures_dir, reference_prompts};
use bitnet_engine::{Model, Tokenizer};

/// (file, reference) pairs from the fixture's MANIFEST.
pub const GGUF_FILES: [(&str, &str); 5] = [
    ("f16.gguf", "reference_llamacpp.safetensors"),
    ("tq2_0.gguf", "reference_llamacpp.safetensors"),
    ("tq1_0.gguf", "reference_llamacpp.safetensors"),
    ("tq2_0_default.gguf", "reference_tq2_0_default.safetensors"),
    ("i2_s.gguf", "reference.safetensors"),
];

#[test]
fn every_fixture_gguf_meets_its_reference() {
    let dir = fixtures_dir().join("bitnet-silu-gguf");
    for (file, reference) in GGUF_FILES {
        let path = dir.join("gguf").join(file);
        let model = Model::load(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
        // F16 and Q6_K embeddings are aligned in the file: used in place, except the Q6_K one
        // (tq2_0_default.gguf) where the AVX-512 VNNI head runs, which the loader reorders into
        // the kernels' lane order (a copy of its own; the file's pages are released).
        let reordered = file == "tq2_0_default.gguf"
            && matches!(
                bitnet_kernels::dispatch::active(),
                bitnet_kernels::Kernel::Avx512Vnni | bitnet_kernels::Kernel::Amx
            );
        assert_eq!(
            model.zero_copy_embedding(),
            !reordered,
            "{file}: embedding copied, or not reordered for the VNNI head"
        );
        if file == "i2_s.gguf" {
            // I2_S is our block layout: every projection is used in place from the mmap.
            assert_eq!(model.zero_copy_projections(), (14, 14));
        }
        // The vocabulary embedded in the file tokenizes the prompts to the reference ids.
        let tok = Tokenizer::load(&path, &model.config).unwrap();
        for (i, text) in reference_prompts(&dir).iter().enumerate() {
            let r = LogitsRecord::read(&dir.join(reference), &format!("p{i}.")).unwrap();
            let ids: Vec<i64> = tok
                .encode(text, true)
                .unwrap()
                .iter()
                .map(|&x| x as i64)
                .collect();
            assert_eq!(ids, r.ids, "{file}: tokenization of {text:?}");
        }
        assert_meets_reference(&model, &dir.join(reference), file);
    }
}

/// Microsoft's 2B-4T GGUF carries a converter placeholder template; for the relu² BitNet archs
/// it is replaced by the trained format, while a real template in metadata is used as is.
#[test]
fn chat_template_from_metadata_except_the_2b4t_placeholder() {
    use bitnet_engine::convert::gguf_out::{write_gguf, GgufOptions};
    use bitnet_engine::convert::Parts;
    use bitnet_engine::{ChatMessage, ChatTemplate};
    use bitnet_formats::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue};
    let tmp = tempfile::tempdir().unwrap();
    let src = bitnet_engine::test_support::fixture_models()
        .into_iter()
        .find(|d| d.ends_with("bitnet-tiny-packed"))
        .unwrap();
    let base = tmp.path().join("base.gguf");
    let parts = Parts::open(&src).unwrap();
    let opts = GgufOptions {
        ternary: GgmlType::I2S,
        embedding: GgmlType::F16,
    };
    write_gguf(&parts, opts, &base, |_, _, _| {}).unwrap();
    let with_template = |template: &str, out: &std::path::Path| {
        let f = GgufFile::open(&base).unwrap();
        let mut w = GgufWriter::new();
        for (k, v) in &f.metadata {
            w.set(k, v.clone());
        }
        w.set(
            "tokenizer.chat_template",
            MetaValue::String(template.into()),
        );
        for t in &f.tensors {
            w.add_tensor(&t.name, t.ggml_type, &t.dims, f.data(t).to_vec())
                .unwrap();
        }
        w.write(out).unwrap();
    };
    let msgs = [ChatMessage::new("user", "Hi")];
    let placeholder =
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ 'Human: ' + \
        message['content'] + '\\n\\nBITNETAssistant: ' }}{% endif %}{% endfor %}";
    let p = tmp.path().join("placeholder.gguf");
    with_template(placeholder, &p);
    let model = Model::load(&p).unwrap();
    let tok = Tokenizer::load(&p, &model.config).unwrap();
    let t = ChatTemplate::for_model(&model.config, &tok).unwrap();
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|begin_of_text|>User: Hi<|eot_id|>Assistant: "
    );
    let own = tmp.path().join("own.gguf");
    with_template(
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}",
        &own,
    );
    let tok = Tokenizer::load(&own, &model.config).unwrap();
    let t = ChatTemplate::for_model(&model.config, &tok).unwrap();
    assert_eq!(t.render(&msgs, true).unwrap(), "<user>Hi");
}
