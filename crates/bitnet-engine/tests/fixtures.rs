//! The fixtures README's three criteria, through the library, on every
//! `shared/fixtures/*/reference.safetensors`.

use bitnet_engine::compare::{std_dev, GreedyReport, LogitStats, LogitsRecord};
use bitnet_engine::generate::greedy_with_logits;
use bitnet_engine::test_support::{fixture_models, reference_prompts};
use bitnet_engine::{
    GenerateParams, Generator, KvCache, Model, RunState, SamplingParams, Tokenizer,
};

fn ids_u32(ids: &[i64]) -> Vec<u32> {
    ids.iter().map(|&x| x as u32).collect()
}

#[test]
fn tokenization_matches_reference_ids() {
    let mut checked = 0;
    for dir in fixture_models() {
        let model_cfg = bitnet_engine::ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let tok = Tokenizer::load(&dir, &model_cfg).unwrap();
        for (i, text) in reference_prompts(&dir).iter().enumerate() {
            let r =
                LogitsRecord::read(&dir.join("reference.safetensors"), &format!("p{i}.")).unwrap();
            let ids = tok.encode(text, true).unwrap();
            assert_eq!(
                ids,
                ids_u32(&r.ids),
                "{} p{i}: tokenization of {text:?}",
                dir.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 9, "only {checked} prompts checked");
}

#[test]
fn prompt_logits_and_greedy_decode_match_reference() {
    for dir in fixture_models() {
        let model = Model::load(&dir).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        for i in 0..3 {
            let r =
                LogitsRecord::read(&dir.join("reference.safetensors"), &format!("p{i}.")).unwrap();
            let ids = ids_u32(&r.ids);
            let ref_greedy = r.greedy.as_ref().expect("reference greedy");
            let ref_gl = r.greedy_logits.as_ref().expect("reference greedy_logits");
            let s = std_dev(&r.logits);
            let (logits, greedy, greedy_logits) =
                greedy_with_logits(&model, &ids, ref_greedy.len()).unwrap();

            let stats = LogitStats::compute(&r.logits, &logits, r.vocab, s);
            eprintln!("{name} p{i} prompt: {stats:?}");
            assert_eq!(stats.positions, ids.len());
            assert!(stats.passes(), "{name} p{i}: prompt logits {stats:?}");

            let g: Vec<i64> = greedy.iter().map(|&x| x as i64).collect();
            let rep = GreedyReport::compute(ref_greedy, ref_gl, &g, &greedy_logits, r.vocab, s);
            eprintln!("{name} p{i} greedy: {rep:?}");
            assert_eq!(rep.steps, ref_greedy.len());
            assert!(rep.passes(), "{name} p{i}: greedy {rep:?}");
        }
    }
}

#[test]
fn batched_prefill_equals_token_by_token_decode() {
    for dir in fixture_models() {
        let model = Model::load(&dir).unwrap();
        let r = LogitsRecord::read(&dir.join("reference.safetensors"), "p0.").unwrap();
        let ids = ids_u32(&r.ids);
        let c = &model.config;
        let mut batched = Vec::new();
        let mut cache = KvCache::new(c, ids.len());
        let mut st = RunState::new(c, 64, ids.len());
        model
            .forward_all(&ids, &mut cache, &mut st, &mut batched)
            .unwrap();

        let mut stepwise = Vec::new();
        let mut cache = KvCache::new(c, ids.len());
        let mut st1 = RunState::new(c, 1, ids.len());
        for &t in &ids {
            stepwise.extend_from_slice(model.forward_last(&[t], &mut cache, &mut st1).unwrap());
        }
        // Odd chunking (prefill in pieces of 5) must agree too.
        let mut chunked = Vec::new();
        let mut cache = KvCache::new(c, ids.len());
        let mut st5 = RunState::new(c, 5, ids.len());
        model
            .forward_all(&ids, &mut cache, &mut st5, &mut chunked)
            .unwrap();

        let s = std_dev(&batched);
        for other in [&stepwise, &chunked] {
            let stats = LogitStats::compute(&batched, other, c.vocab_size, s);
            assert!(stats.max_rel <= 1e-4, "{}: {stats:?}", dir.display());
            assert_eq!(stats.top1_agree, ids.len());
        }
    }
}

#[test]
fn generator_greedy_follows_reference_and_seeds_repeat() {
    let dir = fixture_models()
        .into_iter()
        .find(|d| d.ends_with("bitnet-tiny-packed"))
        .expect("bitnet-tiny-packed fixture");
    let model = Model::load(&dir).unwrap();
    let tok = Tokenizer::load(&dir, &model.config).unwrap();
    let r = LogitsRecord::read(&dir.join("reference.safetensors"), "p1.").unwrap();
    let ids = ids_u32(&r.ids);
    let mut gen = Generator::new(&model, &tok, None);
    let params = GenerateParams {
        max_tokens: 24,
        ignore_eos: true,
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = gen
        .generate(&ids, &params, |s| streamed.push_str(s))
        .unwrap();
    let want: Vec<u32> = ids_u32(r.greedy.as_ref().unwrap());
    assert_eq!(out.tokens, want);
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, tok.decode(&want, true).unwrap());

    // Prefix reuse: a second run of the same prompt reruns only the last prompt token.
    let again = gen.generate(&ids, &params, |_| {}).unwrap();
    assert_eq!(again.tokens, want);
    assert_eq!(again.prompt_tokens_run, 1);

    let sample = |gen: &mut Generator, seed| {
        let p = GenerateParams {
            max_tokens: 40,
            ignore_eos: true,
            sampling: SamplingParams {
                // The random fixture's logits are peaked (std ≈ 8): flatten them.
                temperature: 8.0,
                top_k: 100,
                top_p: 0.98,
                seed: Some(seed),
                ..Default::default()
            },
            ..Default::default()
        };
        gen.generate(&ids, &p, |_| {}).unwrap().text
    };
    let a = sample(&mut gen, 1);
    assert_eq!(a, sample(&mut gen, 1), "same seed, same text");
    assert_ne!(a, sample(&mut gen, 2), "another seed, another text");
}
