//! Every GGUF file of `bitnet-silu-gguf/gguf/` loads and meets the README criteria against the
//! reference its MANIFEST names for that file.

use bitnet_engine::compare::{std_dev, GreedyReport, LogitStats, LogitsRecord};
use bitnet_engine::generate::greedy_with_logits;
use bitnet_engine::test_support::{fixtures_dir, reference_prompts};
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
        for i in 0..3 {
            let r = LogitsRecord::read(&dir.join(reference), &format!("p{i}.")).unwrap();
            let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
            let ref_greedy = r.greedy.as_ref().unwrap();
            let s = std_dev(&r.logits);
            let (logits, greedy, gl) = greedy_with_logits(&model, &ids, ref_greedy.len()).unwrap();
            let st = LogitStats::compute(&r.logits, &logits, r.vocab, s);
            let g: Vec<i64> = greedy.iter().map(|&x| x as i64).collect();
            let rep = GreedyReport::compute(
                ref_greedy,
                r.greedy_logits.as_ref().unwrap(),
                &g,
                &gl,
                r.vocab,
                s,
            );
            eprintln!(
                "{file} p{i}: prompt mean {:.2e} max {:.2e}; greedy part {:?}",
                st.mean_rel, st.max_rel, rep.first_divergence
            );
            assert!(st.passes(), "{file} p{i}: {st:?}");
            assert!(rep.passes(), "{file} p{i}: {rep:?}");
        }
    }
}
