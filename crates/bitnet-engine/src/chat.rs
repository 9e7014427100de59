//! Chat templates: the model's Jinja template from `tokenizer_config.json`, rendered with
//! minijinja the way transformers renders it (`trim_blocks`, `lstrip_blocks`, Python string
//! methods, `raise_exception`, `strftime_now`), or the trained 2B-4T format when a BitNet model
//! ships none.

use crate::config::{Architecture, ModelConfig};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use minijinja::{context, Environment};
use serde::{Deserialize, Serialize};

/// bitnet-b1.58-2B-4T's trained chat format (BITNET.md): role capitalized, content trimmed,
/// each turn closed by `<|eot_id|>`.
pub const BITNET_TRAINED_TEMPLATE: &str = "{{ bos_token }}{% for message in messages %}\
{{ message['role'] | capitalize }}: {{ message['content'] | trim }}<|eot_id|>{% endfor %}\
{% if add_generation_prompt %}Assistant: {% endif %}";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// Builds a message.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Where a template came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// `tokenizer_config.json`'s `chat_template`.
    TokenizerConfig,
    /// The built-in trained format of BitNet b1.58 2B-4T.
    BitNetTrained,
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    /// Origin of the template.
    pub source: TemplateSource,
}

impl ChatTemplate {
    /// The template for a model: its own, else the trained format for BitNet checkpoints.
    pub fn for_model(config: &ModelConfig, tok: &Tokenizer) -> Result<Self> {
        let (src, source) = match tok.chat_template() {
            Some(t) => (t.to_string(), TemplateSource::TokenizerConfig),
            None if config.architecture == Architecture::BitNet => {
                (BITNET_TRAINED_TEMPLATE.to_string(), TemplateSource::BitNetTrained)
            }
            None => {
                return Err(Error::ChatTemplate(format!(
                    "the model has no chat_template in tokenizer_config.json (next to {}); use `generate` for plain completion",
                    tok.path().display()
                )))
            }
        };
        Self::new(
            src,
            tok.bos_token().unwrap_or_default(),
            tok.eos_token().unwrap_or_default(),
            source,
        )
    }

    /// Compiles a template source.
    pub fn new(src: String, bos: &str, eos: &str, source: TemplateSource) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| strftime_now(&fmt));
        env.add_template_owned("chat", src)
            .map_err(|e| Error::ChatTemplate(format!("cannot parse: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos: bos.into(),
            eos: eos.into(),
            source,
        })
    }

    /// Renders the conversation; with `add_generation_prompt`, ends with the assistant's cue.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let t = self
            .env
            .get_template("chat")
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        t.render(context! {
            messages => messages
                .iter()
                .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
                .collect::<minijinja::Value>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| Error::ChatTemplate(format!("cannot render: {e}")))
    }
}

/// `strftime_now` for templates: UTC date with `%Y %m %d %b %B %H %M %S %%`.
fn strftime_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86400) as i64;
    let sod = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month = MONTHS[(m - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('b') => out.push_str(&month[..3]),
            Some('B') => out.push_str(month),
            Some('H') => out.push_str(&format!("{:02}", sod / 3600)),
            Some('M') => out.push_str(&format!("{:02}", sod / 60 % 60)),
            Some('S') => out.push_str(&format!("{:02}", sod % 60)),
            Some('%') => out.push('%'),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_format() {
        let t = ChatTemplate::new(
            BITNET_TRAINED_TEMPLATE.into(),
            "<|begin_of_text|>",
            "<|end_of_text|>",
            TemplateSource::BitNetTrained,
        )
        .unwrap();
        let s = t
            .render(
                &[
                    ChatMessage::new("system", "Be brief. "),
                    ChatMessage::new("user", " Hi"),
                ],
                true,
            )
            .unwrap();
        assert_eq!(
            s,
            "<|begin_of_text|>System: Be brief.<|eot_id|>User: Hi<|eot_id|>Assistant: "
        );
    }

    #[test]
    fn hf_features_and_errors() {
        let src = "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
{{ raise_exception('bad role ' + m.role) }}{% endif %}\n{{ m.content.strip() | upper }}\n{% endfor %}";
        let t = ChatTemplate::new(src.into(), "", "", TemplateSource::TokenizerConfig).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", " a ")], false).unwrap(),
            "A\n"
        );
        let e = t
            .render(&[ChatMessage::new("tool", "x")], false)
            .unwrap_err();
        assert!(e.to_string().contains("bad role tool"), "{e}");
        assert!(strftime_now("%Y-%m-%d").len() == 10);
    }
}
