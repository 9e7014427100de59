use bitnet_engine::compare::*;
use bitnet_engine::*;
use std::path::Path;

#[test]
fn quick() {
    for fx in ["bitnet-tiny-packed", "bitnet-tiny-master", "bitnet-silu-gguf"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures").join(fx);
        let m = Model::load(&dir).unwrap();
        for i in 0..3 {
            let r = LogitsRecord::read(&dir.join("reference.safetensors"), &format!("p{i}.")).unwrap();
            let ids: Vec<u32> = r.ids.iter().map(|&x| x as u32).collect();
            let mut cache = KvCache::new(&m.config, 256);
            let mut st = RunState::new(&m.config, 256, 256);
            let mut out = Vec::new();
            m.forward_all(&ids, &mut cache, &mut st, &mut out).unwrap();
            let s = std_dev(&r.logits);
            let stats = LogitStats::compute(&r.logits, &out, r.vocab, s);
            println!("{fx} p{i}: {stats:?}");
        }
    }
}
