//! The decode step (forward of one token + sampling) allocates nothing once warm.

use bitnet_engine::sampling::Sampler;
use bitnet_engine::test_support::fixture_models;
use bitnet_engine::{KvCache, Model, RunState, SamplingParams};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

struct Counting;
static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_step_does_not_allocate() {
    for dir in fixture_models() {
        let model = Model::load(&dir).unwrap();
        let c = &model.config;
        let mut cache = KvCache::new(c, 64);
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
        ALLOCS.store(0, Ordering::SeqCst);
        COUNTING.store(true, Ordering::SeqCst);
        for _ in 0..20 {
            let l = model.forward_last(&[id], &mut cache, &mut st).unwrap();
            logits.copy_from_slice(l);
            sampler.accept(id);
            id = sampler.sample(&mut logits);
        }
        COUNTING.store(false, Ordering::SeqCst);
        assert_eq!(
            ALLOCS.load(Ordering::SeqCst),
            0,
            "{}: allocations in decode",
            dir.display()
        );
    }
}
