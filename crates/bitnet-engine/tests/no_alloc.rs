//! The decode step (forward of one token + sampling) allocates nothing once warm, over an f32
//! or an f16 KV cache.

use bitnet_engine::sampling::Sampler;
use bitnet_engine::test_support::fixture_models;
use bitnet_engine::{KvCache, KvType, Model, RunState, SamplingParams};
use bitnet_kernels::alloc_count::CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc::new();

#[test]
fn decode_step_does_not_allocate() {
    for (dir, kv) in fixture_models()
        .into_iter()
        .flat_map(|d| [(d.clone(), KvType::F32), (d, KvType::F16)])
    {
        let model = Model::load(&dir).unwrap();
        let c = &model.config;
        let mut cache = KvCache::with_type(c, 64, kv);
        let mut st = RunState::new(c, 16, 64);
        let params = SamplingParams {
            temperature: 0.9,
            top_k: 40,
            top_p: 0.9,
            min_p: 0.01,
            repeat_penalty: 1.1,
            seed: Some(3),
            presence_penalty: 0.5,
            frequency_penalty: 0.3,
            logit_bias: vec![(5, 1.0)],
        };
        let mut sampler = Sampler::new(params, c.vocab_size).unwrap();
        let mut logits = vec![0f32; c.vocab_size];
        logits.copy_from_slice(
            model
                .forward_last(&[1, 2, 3, 4], &mut cache, &mut st)
                .unwrap(),
        );
        let mut id = sampler.sample(&mut logits);
        // Warm-up step, then count.
        logits.copy_from_slice(model.forward_last(&[id], &mut cache, &mut st).unwrap());
        id = sampler.sample(&mut logits);
        GLOBAL.start();
        for _ in 0..20 {
            let l = model.forward_last(&[id], &mut cache, &mut st).unwrap();
            logits.copy_from_slice(l);
            sampler.accept(id);
            id = sampler.sample(&mut logits);
        }
        assert_eq!(
            GLOBAL.stop(),
            0,
            "{} ({kv}): allocations in decode",
            dir.display()
        );
    }
}
