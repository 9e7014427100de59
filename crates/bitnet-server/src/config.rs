//! `bitnet serve` settings: command-line flags, each also an environment variable
//! (`BITNET_…`), over an optional TOML file (same names, snake_case), over defaults.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors in the settings.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The TOML file is invalid (unknown key, wrong type).
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the key.
        message: String,
    },
    /// A value is out of range.
    #[error("setting `{name}` = {value}: {reason}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// No model given.
    #[error("no model: pass --model PATH (or BITNET_MODEL, or `model` in the config file)")]
    NoModel,
}

/// Every setting, optional: flags and environment variables, or the TOML file.
#[derive(clap::Args, Deserialize, Default, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// Model: a checkpoint directory or a .gguf file.
    #[arg(long, env = "BITNET_MODEL")]
    pub model: Option<PathBuf>,
    /// The model id clients put in `model` (default: the directory or file name).
    #[arg(long, env = "BITNET_MODEL_NAME")]
    pub model_name: Option<String>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "BITNET_HOST")]
    pub host: Option<String>,
    /// Port [default: 8080; 0 picks a free one].
    #[arg(long, env = "BITNET_PORT")]
    pub port: Option<u16>,
    /// Sequences decoded together in one step [default: 16].
    #[arg(long, env = "BITNET_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Requests that may wait for a slot; more get 503 [default: 256].
    #[arg(long, env = "BITNET_MAX_QUEUE")]
    pub max_queue: Option<usize>,
    /// Prompt tokens that may wait; more get 503 [default: 262144].
    #[arg(long, env = "BITNET_MAX_QUEUE_TOKENS")]
    pub max_queue_tokens: Option<usize>,
    /// Seconds a request may wait in the queue before a 503 [default: 30].
    #[arg(long, env = "BITNET_QUEUE_TIMEOUT")]
    pub queue_timeout: Option<f64>,
    /// Context window per sequence in tokens [default: the model's].
    #[arg(long, env = "BITNET_CTX")]
    pub ctx: Option<usize>,
    /// KV-cache budget in token positions over all running sequences [default: max-batch ×
    /// ctx, capped at half the machine's memory].
    #[arg(long, env = "BITNET_KV_TOKENS")]
    pub kv_tokens: Option<usize>,
    /// KV-cache element type on the CPU: f32, or f16 (half the memory and half the bytes
    /// attention reads; each key and value rounded to f16) [default: f32]. On a GPU,
    /// `BITNET_CUDA_KV` sets the device cache's.
    #[arg(long, env = "BITNET_KV_TYPE")]
    pub kv_type: Option<String>,
    /// Where the model runs: auto (a CUDA GPU when this build has the `cuda` feature and one
    /// is usable, else the CPU), cpu, or cuda[:N] [default: auto].
    #[arg(long, env = "BITNET_DEVICE")]
    pub device: Option<String>,
    /// Tokens per batched step (decode tokens plus prompt pieces) [default: 512].
    #[arg(long, env = "BITNET_STEP_TOKENS")]
    pub step_tokens: Option<usize>,
    /// Seconds before a non-streaming request times out [default: 600].
    #[arg(long, env = "BITNET_REQUEST_TIMEOUT")]
    pub request_timeout: Option<f64>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long, env = "BITNET_BODY_LIMIT")]
    pub body_limit: Option<usize>,
    /// Seconds in-flight requests may run on after SIGTERM/ctrl-c [default: 30].
    #[arg(long, env = "BITNET_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<f64>,
    /// Require API keys (tenants, limits, usage metering); on as well when a database or
    /// Redis URL is given.
    #[arg(long, env = "BITNET_AUTH", num_args = 0..=1, default_missing_value = "true")]
    pub auth: Option<bool>,
    /// Tenancy database: `sqlite://PATH` or `postgres://…` [default: sqlite in the data dir].
    #[arg(long, env = "BITNET_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for rate-limit counters shared by replicas (`redis://host:port`); without it the
    /// counters live in this process.
    #[arg(long, env = "BITNET_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Folder for the SQLite database and the usage journal [default: ~/.local/share/bitnet].
    #[arg(long, env = "BITNET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Usage journal folder [default: DATA_DIR/journal].
    #[arg(long, env = "BITNET_JOURNAL_DIR")]
    pub journal_dir: Option<PathBuf>,
    /// Seconds a looked-up API key stays cached (changes made through another replica take
    /// effect within this) [default: 5].
    #[arg(long, env = "BITNET_KEY_CACHE_TTL")]
    pub key_cache_ttl: Option<f64>,
    /// Longest a usage row waits in the journal before its batch is stored, seconds
    /// [default: 0.1].
    #[arg(long, env = "BITNET_USAGE_FLUSH")]
    pub usage_flush: Option<f64>,
    /// Files (uploads without `expires_after`, batch output and error files) expire this many
    /// days after their creation and are deleted [default: kept until deleted].
    #[arg(long, env = "BITNET_FILE_RETENTION_DAYS")]
    pub file_retention_days: Option<f64>,
    /// POST webhook events (key created/rotated/blocked/deleted, budget exceeded) here:
    /// `http://host:port/path`.
    #[arg(long, env = "BITNET_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the `X-Bitnet-Signature` header (required with --webhook-url).
    #[arg(long, env = "BITNET_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Accept OIDC JWT bearer tokens too, verified against this JWKS: a file (re-read when it
    /// changes) or an `http://` URL (re-fetched every 5 min and on an unknown `kid`).
    #[arg(long, env = "BITNET_OIDC_JWKS")]
    pub oidc_jwks: Option<String>,
    /// The `iss` OIDC tokens must carry (required with --oidc-jwks).
    #[arg(long, env = "BITNET_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// Accepted `aud` values, comma-separated (required with --oidc-jwks).
    #[arg(long, env = "BITNET_OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The claim naming the caller's tenant; dot paths reach nested claims [default: tenant].
    #[arg(long, env = "BITNET_OIDC_TENANT_CLAIM")]
    pub oidc_tenant_claim: Option<String>,
    /// The claim holding the caller's roles (string or array) [default: roles].
    #[arg(long, env = "BITNET_OIDC_ROLE_CLAIM")]
    pub oidc_role_claim: Option<String>,
    /// The role value that makes a caller an admin (only where the tenant's policy key is an
    /// admin key too) [default: admin].
    #[arg(long, env = "BITNET_OIDC_ADMIN_ROLE")]
    pub oidc_admin_role: Option<String>,
    /// Alias of the API key whose models and limits a tenant's SSO callers share
    /// [default: sso].
    #[arg(long, env = "BITNET_OIDC_POLICY_ALIAS")]
    pub oidc_policy_alias: Option<String>,
    /// A TOML file with any of these settings (flags and environment win).
    #[arg(long = "config", env = "BITNET_CONFIG")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
}

/// The resolved settings.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Model path.
    pub model: PathBuf,
    /// Served model id.
    pub model_name: String,
    /// Listen address.
    pub host: String,
    /// Listen port.
    pub port: u16,
    /// Sequences per step.
    pub max_batch: usize,
    /// Queue length in requests.
    pub max_queue: usize,
    /// Queue length in prompt tokens.
    pub max_queue_tokens: usize,
    /// Queue deadline.
    pub queue_timeout: Duration,
    /// Context override.
    pub ctx: Option<usize>,
    /// KV budget override.
    pub kv_tokens: Option<usize>,
    /// KV-cache element type (CPU).
    pub kv_type: bitnet_engine::KvType,
    /// Device for the forward pass.
    pub device: bitnet_engine::Device,
    /// Tokens per step.
    pub step_tokens: usize,
    /// Non-streaming request timeout.
    pub request_timeout: Duration,
    /// Body limit in bytes.
    pub body_limit: usize,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// API keys, limits and metering (`None`: an open server).
    pub tenancy: Option<bitnet_tenancy::TenancyConfig>,
}

/// The OIDC settings, when `--oidc-jwks` is given.
fn oidc_config(o: &ServeOptions) -> Result<Option<bitnet_tenancy::OidcConfig>, ConfigError> {
    let Some(jwks) = &o.oidc_jwks else {
        return Ok(None);
    };
    let need = |name: &'static str, v: &Option<String>| match v {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => Err(ConfigError::Invalid {
            name,
            value: String::new(),
            reason: "required with --oidc-jwks",
        }),
    };
    let issuer = need("oidc_issuer", &o.oidc_issuer)?;
    let audience = need("oidc_audience", &o.oidc_audience)?;
    let aud: Vec<&str> = audience
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    let mut c = bitnet_tenancy::OidcConfig::new(jwks, &issuer, &aud);
    let set = |field: &mut String, v: &Option<String>| {
        if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            *field = v.to_string();
        }
    };
    set(&mut c.tenant_claim, &o.oidc_tenant_claim);
    set(&mut c.role_claim, &o.oidc_role_claim);
    set(&mut c.admin_role, &o.oidc_admin_role);
    set(&mut c.policy_alias, &o.oidc_policy_alias);
    Ok(Some(c))
}

impl ServeOptions {
    /// Reads a TOML settings file.
    pub fn from_toml_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// `self`'s values, else `other`'s.
    pub fn or(self, o: ServeOptions) -> ServeOptions {
        ServeOptions {
            model: self.model.or(o.model),
            model_name: self.model_name.or(o.model_name),
            host: self.host.or(o.host),
            port: self.port.or(o.port),
            max_batch: self.max_batch.or(o.max_batch),
            max_queue: self.max_queue.or(o.max_queue),
            max_queue_tokens: self.max_queue_tokens.or(o.max_queue_tokens),
            queue_timeout: self.queue_timeout.or(o.queue_timeout),
            ctx: self.ctx.or(o.ctx),
            kv_tokens: self.kv_tokens.or(o.kv_tokens),
            kv_type: self.kv_type.or(o.kv_type),
            device: self.device.or(o.device),
            step_tokens: self.step_tokens.or(o.step_tokens),
            request_timeout: self.request_timeout.or(o.request_timeout),
            body_limit: self.body_limit.or(o.body_limit),
            shutdown_grace: self.shutdown_grace.or(o.shutdown_grace),
            auth: self.auth.or(o.auth),
            database_url: self.database_url.or(o.database_url),
            redis_url: self.redis_url.or(o.redis_url),
            data_dir: self.data_dir.or(o.data_dir),
            journal_dir: self.journal_dir.or(o.journal_dir),
            key_cache_ttl: self.key_cache_ttl.or(o.key_cache_ttl),
            usage_flush: self.usage_flush.or(o.usage_flush),
            file_retention_days: self.file_retention_days.or(o.file_retention_days),
            webhook_url: self.webhook_url.or(o.webhook_url),
            webhook_secret: self.webhook_secret.or(o.webhook_secret),
            oidc_jwks: self.oidc_jwks.or(o.oidc_jwks),
            oidc_issuer: self.oidc_issuer.or(o.oidc_issuer),
            oidc_audience: self.oidc_audience.or(o.oidc_audience),
            oidc_tenant_claim: self.oidc_tenant_claim.or(o.oidc_tenant_claim),
            oidc_role_claim: self.oidc_role_claim.or(o.oidc_role_claim),
            oidc_admin_role: self.oidc_admin_role.or(o.oidc_admin_role),
            oidc_policy_alias: self.oidc_policy_alias.or(o.oidc_policy_alias),
            config_file: self.config_file.or(o.config_file),
        }
    }

    /// Merges the config file (if any) under these values and applies defaults.
    pub fn resolve(self) -> Result<ServeConfig, ConfigError> {
        let o = match &self.config_file {
            Some(p) => {
                let file = Self::from_toml_file(p)?;
                self.or(file)
            }
            None => self,
        };
        let oidc = oidc_config(&o)?;
        let model = o.model.ok_or(ConfigError::NoModel)?;
        let model_name = o.model_name.unwrap_or_else(|| {
            model
                .file_name()
                .map(|n| n.to_string_lossy().trim_end_matches(".gguf").to_string())
                .unwrap_or_else(|| "bitnet".into())
        });
        let positive = |name: &'static str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    name,
                    value: v.to_string(),
                    reason: "must be at least 1",
                })
            } else {
                Ok(v)
            }
        };
        let secs = |name: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 && v < 1e9 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(ConfigError::Invalid {
                    name,
                    value: v.to_string(),
                    reason: "must be a positive number of seconds",
                })
            }
        };
        let request_timeout = secs("request_timeout", o.request_timeout.unwrap_or(600.0))?;
        let tenancy_on = o.auth.unwrap_or(false)
            || o.database_url.is_some()
            || o.redis_url.is_some()
            || oidc.is_some();
        let tenancy =
            if tenancy_on {
                let data_dir = o.data_dir.unwrap_or_else(bitnet_tenancy::default_data_dir);
                let ttl = match o.key_cache_ttl {
                    Some(0.0) => Duration::ZERO,
                    Some(v) => secs("key_cache_ttl", v)?,
                    None => Duration::from_secs(5),
                };
                Some(bitnet_tenancy::TenancyConfig {
                    database_url: o
                        .database_url
                        .unwrap_or_else(|| bitnet_tenancy::default_database_url(&data_dir)),
                    redis_url: o.redis_url,
                    journal_dir: o.journal_dir.unwrap_or_else(|| data_dir.join("journal")),
                    key_cache_ttl: ttl,
                    lease_ttl: request_timeout + Duration::from_secs(60),
                    flush: secs("usage_flush", o.usage_flush.unwrap_or(0.1))?,
                    file_retention: match o.file_retention_days {
                        Some(d) if d.is_finite() && d > 0.0 && d <= 36_500.0 => {
                            Some(Duration::from_secs_f64(d * 86_400.0))
                        }
                        Some(d) => {
                            return Err(ConfigError::Invalid {
                                name: "file_retention_days",
                                value: d.to_string(),
                                reason: "must be a number of days above 0 (at most 36500)",
                            })
                        }
                        None => None,
                    },
                    max_connections: 8,
                    webhook: match (o.webhook_url, o.webhook_secret) {
                        (Some(url), Some(secret)) if !secret.is_empty() => {
                            bitnet_tenancy::webhooks::parse_url(&url).map_err(|e| {
                                ConfigError::Invalid {
                                    name: "webhook_url",
                                    value: url.clone(),
                                    reason: if e.to_string().contains("http://") {
                                        "only http:// URLs (terminate TLS in a proxy)"
                                    } else {
                                        "not an http://host[:port]/path URL"
                                    },
                                }
                            })?;
                            Some(bitnet_tenancy::webhooks::WebhookConfig {
                                url,
                                secret: secret.into_bytes(),
                                timeout: Duration::from_secs(10),
                            })
                        }
                        (Some(url), _) => return Err(ConfigError::Invalid {
                            name: "webhook_url",
                            value: url,
                            reason:
                                "needs --webhook-secret (BITNET_WEBHOOK_SECRET) to sign the events",
                        }),
                        (None, _) => None,
                    },
                    oidc,
                })
            } else {
                None
            };
        Ok(ServeConfig {
            tenancy,
            model,
            model_name,
            host: o.host.unwrap_or_else(|| "127.0.0.1".into()),
            port: o.port.unwrap_or(8080),
            max_batch: positive("max_batch", o.max_batch.unwrap_or(16))?,
            max_queue: o.max_queue.unwrap_or(256),
            max_queue_tokens: positive("max_queue_tokens", o.max_queue_tokens.unwrap_or(1 << 18))?,
            queue_timeout: secs("queue_timeout", o.queue_timeout.unwrap_or(30.0))?,
            ctx: o.ctx.map(|c| positive("ctx", c)).transpose()?,
            kv_tokens: o.kv_tokens.map(|c| positive("kv_tokens", c)).transpose()?,
            kv_type: match o.kv_type.as_deref() {
                None => bitnet_engine::KvType::F32,
                Some(t) => t.parse().map_err(|_| ConfigError::Invalid {
                    name: "kv_type",
                    value: t.to_string(),
                    reason: "expected f32 or f16",
                })?,
            },
            device: match o.device.as_deref() {
                None => bitnet_engine::Device::Auto,
                Some(d) => d.parse().map_err(|_| ConfigError::Invalid {
                    name: "device",
                    value: d.to_string(),
                    reason: "expected auto, cpu, cuda or cuda:N",
                })?,
            },
            step_tokens: positive("step_tokens", o.step_tokens.unwrap_or(512))?,
            request_timeout,
            body_limit: positive("body_limit", o.body_limit.unwrap_or(4 << 20))?,
            shutdown_grace: secs("shutdown_grace", o.shutdown_grace.unwrap_or(30.0))?,
        })
    }
}

/// Physical memory in bytes (Linux `/proc/meminfo`), if known.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
