//! `bitnet compare-logits A B`: differences in units of `s = std(A.logits)`, top-1 agreement,
//! the first greedy step where the two part, and a verdict against the fixture criteria
//! (exit status 1 when they fail).

use anyhow::Result;
use bitnet_engine::compare::{
    kl_divergence, std_dev, GreedyReport, LogitStats, LogitsRecord, MAX_BOUND, MEAN_BOUND,
    TOP1_MARGIN,
};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `bitnet compare-logits`.
#[derive(clap::Args)]
pub struct Args {
    /// Reference logits file (its prompt logits give the scale s).
    a: PathBuf,
    /// Logits file to check.
    b: PathBuf,
    /// Key prefix in A (e.g. `p0.` for a fixture's reference.safetensors).
    #[arg(long, default_value = "")]
    a_prefix: String,
    /// Key prefix in B.
    #[arg(long, default_value = "")]
    b_prefix: String,
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let ra = LogitsRecord::read(&a.a, &a.a_prefix)?;
    let rb = LogitsRecord::read(&a.b, &a.b_prefix)?;
    let mut ok = true;
    if ra.vocab != rb.vocab {
        anyhow::bail!(
            "vocabulary sizes differ: {} in A, {} in B",
            ra.vocab,
            rb.vocab
        );
    }
    if ra.ids != rb.ids {
        let at = ra.ids.iter().zip(&rb.ids).position(|(x, y)| x != y);
        println!(
            "ids:            DIFFER ({} vs {} tokens; first difference at {})",
            ra.ids.len(),
            rb.ids.len(),
            at.map_or("the end".to_string(), |i| format!("position {i}"))
        );
        ok = false;
    } else {
        println!("ids:            identical ({} tokens)", ra.ids.len());
    }
    let s = std_dev(&ra.logits);
    let st = LogitStats::compute(&ra.logits, &rb.logits, ra.vocab, s);
    println!("scale s:        {s:.6} (std of A's prompt logits)");
    print_stats("prompt logits", &st);
    let kl = kl_divergence(&ra.logits, &rb.logits, ra.vocab);
    let mut sorted = kl.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "KL(A‖B):        mean {:.6}, median {:.6}, max {:.6} nats over {} positions; top-1 agreement {:.1}%",
        kl.iter().sum::<f64>() / kl.len().max(1) as f64,
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
        sorted.last().copied().unwrap_or(0.0),
        kl.len(),
        100.0 * st.top1_agree as f64 / st.positions.max(1) as f64
    );
    ok &= st.passes();
    match (&ra.greedy, &ra.greedy_logits, &rb.greedy, &rb.greedy_logits) {
        (Some(ga), Some(la), Some(gb), Some(lb)) => {
            let rep = GreedyReport::compute(ga, la, gb, lb, ra.vocab, s);
            match (rep.first_divergence, rep.divergence_gap) {
                (None, _) => println!("greedy:         identical for all {} steps", rep.steps),
                (Some(i), Some(g)) => println!(
                    "greedy:         part at step {i} of {} (A's top-2 gap there {g:.4}·s; allowed below {TOP1_MARGIN}·s)",
                    rep.steps
                ),
                (Some(i), None) => println!("greedy:         part at step {i}"),
            }
            print_stats("greedy steps", &rep.stats);
            ok &= rep.passes();
        }
        _ => {
            println!("greedy:         not compared (needs greedy and greedy_logits in both files)")
        }
    }
    println!(
        "verdict:        {} (mean |ΔL| ≤ {MEAN_BOUND}·s, max |ΔL| ≤ {MAX_BOUND}·s, top-1 equal where A's top-2 gap > {TOP1_MARGIN}·s)",
        if ok { "PASS" } else { "FAIL" }
    );
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_stats(what: &str, st: &LogitStats) {
    println!(
        "{:<15} {} positions: mean |ΔL| = {:.6}·s, max |ΔL| = {:.6}·s, top-1 agree {}/{} ({} required, {} violated)",
        format!("{what}:"),
        st.positions,
        st.mean_rel,
        st.max_rel,
        st.top1_agree,
        st.positions,
        st.top1_required,
        st.top1_violations.len()
    );
}
