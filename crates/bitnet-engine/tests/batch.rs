//! Continuous batching: several sequences stepped together (prompts fed whole or in pieces,
//! sequences joining and leaving between steps) give the logits and greedy tokens of each
//! sequence run alone.

use bitnet_engine::forward::DEFAULT_MAX_BATCH;
use bitnet_engine::test_support::fixture_models;
use bitnet_engine::{compare::argmax, KvCache, KvType, Model, RunState, SeqStep};

const STEPS: usize = 10;

/// Greedy logits of `prompt` then `STEPS` tokens, run alone over a cache of type `kv`.
fn alone(m: &Model, prompt: &[u32], kv: KvType) -> Vec<Vec<f32>> {
    let c = &m.config;
    let mut cache = KvCache::with_type(c, prompt.len() + STEPS + 1, kv);
    let mut st = RunState::new(c, DEFAULT_MAX_BATCH, 256);
    let mut out = vec![m
        .forward_last(prompt, &mut cache, &mut st)
        .unwrap()
        .to_vec()];
    for _ in 0..STEPS {
        let id = argmax(out.last().unwrap()) as u32;
        out.push(m.forward_last(&[id], &mut cache, &mut st).unwrap().to_vec());
    }
    out
}

struct Seq {
    prompt: Vec<u32>,
    fed: usize,
    join_at: usize,
    cache: KvCache,
    next: Option<u32>,
    logits: Vec<Vec<f32>>,
}

#[test]
fn batched_steps_equal_single_sequences() {
    batched_equal_alone(KvType::F32);
}

/// The same with f16 caches: every path reads the same rounded keys and values.
#[test]
fn batched_steps_equal_single_sequences_f16_cache() {
    batched_equal_alone(KvType::F16);
}

fn batched_equal_alone(kv: KvType) {
    for dir in fixture_models() {
        let m = Model::load(&dir).unwrap();
        let c = &m.config;
        let v = c.vocab_size as u32;
        let prompts: Vec<Vec<u32>> = vec![
            (1..20).map(|i| (i * 7) % v).collect(),
            (1..6).map(|i| (i * 13 + 2) % v).collect(),
            (0..33).map(|i| (i * 5 + 1) % v).collect(),
            vec![3],
        ];
        let want: Vec<_> = prompts.iter().map(|p| alone(&m, p, kv)).collect();
        // Sequence i joins at step i; prompts are fed at most 8 tokens per step, so prompt
        // pieces and decode tokens of other sequences share steps.
        let mut seqs: Vec<Seq> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| Seq {
                prompt: p.clone(),
                fed: 0,
                join_at: i,
                cache: KvCache::with_type(c, p.len() + STEPS + 1, kv),
                next: None,
                logits: Vec::new(),
            })
            .collect();
        let mut st = RunState::new(c, 64, 256);
        let mut logits = Vec::new();
        for step in 0..60 {
            let mut idx = Vec::new();
            let mut batch: Vec<SeqStep> = Vec::new();
            let mut tokens: Vec<Vec<u32>> = Vec::new();
            for s in seqs.iter() {
                let active = step >= s.join_at && s.logits.len() <= STEPS;
                tokens.push(if !active {
                    vec![]
                } else if s.fed < s.prompt.len() {
                    s.prompt[s.fed..(s.fed + 8).min(s.prompt.len())].to_vec()
                } else {
                    vec![s.next.unwrap()]
                });
            }
            for (i, s) in seqs.iter_mut().enumerate() {
                if tokens[i].is_empty() {
                    continue;
                }
                let done_prompt = s.fed + tokens[i].len() >= s.prompt.len();
                idx.push((i, done_prompt));
                batch.push(SeqStep {
                    cache: &mut s.cache,
                    tokens: &tokens[i],
                    want_logits: done_prompt,
                });
            }
            if batch.is_empty() {
                break;
            }
            m.forward_batch(&mut batch, &mut st, &mut logits).unwrap();
            drop(batch);
            let mut k = 0;
            for (i, wanted) in idx {
                let s = &mut seqs[i];
                s.fed = (s.fed + tokens[i].len()).min(s.prompt.len());
                if wanted {
                    let row = logits[k * c.vocab_size..(k + 1) * c.vocab_size].to_vec();
                    s.next = Some(argmax(&row) as u32);
                    s.logits.push(row);
                    k += 1;
                }
            }
        }
        for (i, s) in seqs.iter().enumerate() {
            assert_eq!(s.logits.len(), STEPS + 1, "{}: seq {i}", dir.display());
            for (j, (a, b)) in s.logits.iter().zip(&want[i]).enumerate() {
                let worst = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                // Bit for bit: every kernel and the output head give a token the same
                // operations in a batch as alone.
                assert!(
                    a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{} ({kv:?}): seq {i} step {j}: batched vs alone differ by up to {worst}",
                    dir.display()
                );
            }
        }
    }
}

#[test]
fn batch_limits_are_errors() {
    let dir = &fixture_models()[0];
    let m = Model::load(dir).unwrap();
    let c = &m.config;
    let mut st = RunState::new(c, 4, 16);
    let mut cache = KvCache::new(c, 16);
    let mut out = Vec::new();
    let toks = [1u32; 5];
    let e = m
        .forward_batch(
            &mut [SeqStep {
                cache: &mut cache,
                tokens: &toks,
                want_logits: true,
            }],
            &mut st,
            &mut out,
        )
        .unwrap_err();
    assert!(e.to_string().contains("5 tokens"), "{e}");
    let mut small = KvCache::new(c, 2);
    let e = m
        .forward_batch(
            &mut [SeqStep {
                cache: &mut small,
                tokens: &toks[..3],
                want_logits: true,
            }],
            &mut st,
            &mut out,
        )
        .unwrap_err();
    assert!(e.to_string().contains("context"), "{e}");
}
