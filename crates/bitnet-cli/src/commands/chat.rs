//! `bitnet chat`: a conversation rendered with the model's template; the KV cache keeps the
//! conversation so each turn only runs the new tokens.

use super::SamplingArgs;
use anyhow::Result;
use bitnet_engine::{ChatMessage, ChatTemplate, GenerateParams, Generator};
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `bitnet chat`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory or GGUF file (default: the model bundled in `models/kjv-bitnet`).
    #[arg(long, env = "BITNET_MODEL")]
    model: Option<PathBuf>,
    /// System message for the conversation.
    #[arg(long)]
    system: Option<String>,
    /// Tokens per reply at most (lowered, with a note, when the context has less room).
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    device: super::DeviceArgs,
    #[command(flatten)]
    kv: super::KvArgs,
}

/// Runs the subcommand. Each stdin line is one user message; `/reset` clears the conversation,
/// `/exit` (or end of input) quits.
pub fn run(a: Args) -> Result<ExitCode> {
    let model_dir = super::model_or_bundled(a.model.clone())?;
    let sampling = a.sampling.resolve(&model_dir)?;
    let (model, tok) = super::load(&model_dir, a.device)?;
    let template = ChatTemplate::for_model(&model.config, &tok)?;
    let mut gen = Generator::new(&model, &tok, None).with_kv_type(a.kv.kv_type);
    let interactive = std::io::stdin().is_terminal();
    let fresh = || -> Vec<ChatMessage> {
        a.system
            .iter()
            .map(|s| ChatMessage::new("system", s))
            .collect()
    };
    let mut messages = fresh();
    if interactive {
        eprintln!(
            "chatting with {} — /reset starts over, /exit quits",
            model_dir.display()
        );
    }
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            let _ = std::io::stderr().flush();
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let msg = line.trim();
        match msg {
            "" => continue,
            "/exit" | "/quit" => break,
            "/reset" => {
                messages = fresh();
                eprintln!("(conversation cleared)");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::new("user", msg));
        let prompt = template.render(&messages, true)?;
        let ids = tok.encode(&prompt, false)?;
        let room = gen.n_ctx().saturating_sub(ids.len());
        if room == 0 {
            messages.pop();
            eprintln!(
                "error: the conversation ({} tokens) fills the {}-token context; /reset to start over",
                ids.len(),
                gen.n_ctx()
            );
            continue;
        }
        let max_tokens = if room < a.max_tokens {
            eprintln!("(note: only {room} tokens of context left for this reply)");
            room
        } else {
            a.max_tokens
        };
        let params = GenerateParams {
            max_tokens,
            sampling: sampling.clone(),
            ..Default::default()
        };
        // On a worker of the pool (see `generate`): decode steps keep the workers awake.
        let g = rayon::scope(|_| {
            let mut out = std::io::stdout().lock();
            gen.generate(&ids, &params, |s| {
                let _ = out.write_all(s.as_bytes());
                let _ = out.flush();
            })
        })?;
        let _ = writeln!(std::io::stdout().lock());
        messages.push(ChatMessage::new("assistant", &g.text));
    }
    Ok(ExitCode::SUCCESS)
}
