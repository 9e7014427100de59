//! `bitnet admin`: tenants, API keys, usage and the audit log, straight on the store (so the
//! first admin key can be made before any server runs). Changes are audited as `cli:$USER`.

use anyhow::{bail, Context, Result};
use bitnet_tenancy::usage::{parse_time, usage_csv};
use bitnet_tenancy::{KeyUpdate, NewKey, Period, Role, Store, UsageFilter};
use clap::Subcommand;
use std::process::ExitCode;

/// `bitnet admin` options.
#[derive(clap::Args)]
pub struct Args {
    /// Tenancy database: `sqlite://PATH` or `postgres://…` [default: the server's default,
    /// sqlite in the data dir].
    #[arg(long, env = "BITNET_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Data folder of the default SQLite database [default: ~/.local/share/bitnet].
    #[arg(long, env = "BITNET_DATA_DIR", global = true)]
    data_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Tenants (organisations).
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// API keys.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Usage rows (JSON lines, or CSV) or daily aggregates.
    Usage(UsageArgs),
    /// The audit log, newest first (JSON lines).
    Audit {
        /// At most this many entries.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Creates a tenant.
    Create {
        /// Unique name.
        name: String,
    },
    /// Lists tenants (JSON lines).
    List,
}

/// Limits shared by `key create` and `key update`.
#[derive(clap::Args)]
struct KeyLimits {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<i64>,
    /// Tokens (prompt + completion) per minute.
    #[arg(long)]
    tpm: Option<i64>,
    /// Requests at once.
    #[arg(long)]
    max_parallel: Option<i64>,
    /// Token budget per period.
    #[arg(long)]
    budget_tokens: Option<i64>,
    /// Budget period: daily, weekly, monthly or total.
    #[arg(long)]
    budget_period: Option<String>,
    /// Allowed models, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Expires after this many days.
    #[arg(long)]
    expires_in_days: Option<f64>,
    /// Alias.
    #[arg(long)]
    alias: Option<String>,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Creates a key and prints its secret (shown this once).
    Create {
        /// Tenant id or name.
        #[arg(long)]
        tenant: String,
        /// admin or user.
        #[arg(long, default_value = "user")]
        role: String,
        #[command(flatten)]
        limits: KeyLimits,
    },
    /// Lists keys (JSON lines; never the secrets).
    List {
        /// Only this tenant's (id or name).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Changes a key's limits, blocks or unblocks it.
    Update {
        /// Key id (`key_…`).
        id: String,
        /// Block the key.
        #[arg(long, conflicts_with = "unblock")]
        block: bool,
        /// Unblock the key.
        #[arg(long)]
        unblock: bool,
        #[command(flatten)]
        limits: KeyLimits,
    },
    /// Issues a new secret; the old one keeps working for the grace period.
    Rotate {
        /// Key id.
        id: String,
        /// Seconds the old secret keeps working.
        #[arg(long, default_value_t = 86_400.0)]
        grace: f64,
    },
    /// Deletes a key (its usage rows stay).
    Delete {
        /// Key id.
        id: String,
    },
}

#[derive(clap::Args)]
struct UsageArgs {
    /// From (YYYY-MM-DD or Unix ms, inclusive).
    #[arg(long)]
    from: Option<String>,
    /// To (YYYY-MM-DD or Unix ms, exclusive).
    #[arg(long)]
    to: Option<String>,
    /// Tenant id or name.
    #[arg(long)]
    tenant: Option<String>,
    /// Key id.
    #[arg(long)]
    key: Option<String>,
    /// Model.
    #[arg(long)]
    model: Option<String>,
    /// Caller subject of SSO requests (`oidc:SUB`); rows only, not with --daily.
    #[arg(long, conflicts_with = "daily")]
    subject: Option<String>,
    /// CSV instead of JSON lines.
    #[arg(long)]
    csv: bool,
    /// Daily aggregates instead of rows.
    #[arg(long, conflicts_with = "csv")]
    daily: bool,
}

fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

fn period(p: &Option<String>) -> Result<Option<Period>> {
    p.as_deref()
        .map(Period::parse)
        .transpose()
        .map_err(Into::into)
}

fn expires(days: Option<f64>) -> Result<Option<i64>> {
    match days {
        None => Ok(None),
        Some(d) if d.is_finite() && d > 0.0 => {
            Ok(Some(bitnet_tenancy::now_ms() + (d * 86_400_000.0) as i64))
        }
        Some(d) => bail!("--expires-in-days must be a positive number, got {d}"),
    }
}

fn line<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string(v)?);
    Ok(())
}

/// Runs the subcommand.
pub fn run(a: Args) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: Args) -> Result<ExitCode> {
    let url = match a.database_url {
        Some(u) => u,
        None => bitnet_tenancy::default_database_url(
            &a.data_dir.unwrap_or_else(bitnet_tenancy::default_data_dir),
        ),
    };
    let store = Store::connect(&url, 2)
        .await
        .with_context(|| "opening the tenancy database")?;
    match a.what {
        What::Tenant(TenantCmd::Create { name }) => {
            line(&store.create_tenant(&actor(), &name, None).await?)?
        }
        What::Tenant(TenantCmd::List) => {
            for t in store.tenants().await? {
                line(&t)?;
            }
        }
        What::Key(KeyCmd::Create {
            tenant,
            role,
            limits: l,
        }) => {
            let new = NewKey {
                tenant,
                role: Some(Role::parse(&role)?),
                alias: l.alias,
                models: l.models.unwrap_or_default(),
                rpm: l.rpm,
                tpm: l.tpm,
                max_parallel: l.max_parallel,
                budget_tokens: l.budget_tokens,
                budget_period: period(&l.budget_period)?,
                expires_at: expires(l.expires_in_days)?,
                metadata: None,
            };
            let (key, secret) = store.create_key(&actor(), &new).await?;
            line(&serde_json::json!({"key": key, "secret": secret}))?;
            eprintln!("The secret is shown only this once: store it now.");
        }
        What::Key(KeyCmd::List { tenant }) => {
            for k in store.keys(tenant.as_deref()).await? {
                line(&k)?;
            }
        }
        What::Key(KeyCmd::Update {
            id,
            block,
            unblock,
            limits: l,
        }) => {
            let u = KeyUpdate {
                alias: l.alias.map(Some),
                models: l.models,
                rpm: l.rpm.map(Some),
                tpm: l.tpm.map(Some),
                max_parallel: l.max_parallel.map(Some),
                budget_tokens: l.budget_tokens.map(Some),
                budget_period: period(&l.budget_period)?.map(Some),
                expires_at: expires(l.expires_in_days)?.map(Some),
                blocked: if block {
                    Some(true)
                } else if unblock {
                    Some(false)
                } else {
                    None
                },
                ..Default::default()
            };
            line(&store.update_key(&actor(), &id, &u).await?)?;
        }
        What::Key(KeyCmd::Rotate { id, grace }) => {
            if !(grace.is_finite() && grace >= 0.0) {
                bail!("--grace must be a number of seconds ≥ 0, got {grace}");
            }
            let (key, secret) = store
                .rotate_key(&actor(), &id, (grace * 1000.0) as i64)
                .await?;
            line(&serde_json::json!({"key": key, "secret": secret}))?;
            eprintln!("The secret is shown only this once: store it now.");
        }
        What::Key(KeyCmd::Delete { id }) => {
            line(&store.delete_key(&actor(), &id).await?)?;
        }
        What::Usage(u) => {
            let tenant_id = match &u.tenant {
                Some(t) => Some(store.tenant(t).await?.id),
                None => None,
            };
            let f = UsageFilter {
                from_ms: u
                    .from
                    .as_deref()
                    .map(|s| parse_time("--from", s))
                    .transpose()?,
                to_ms: u.to.as_deref().map(|s| parse_time("--to", s)).transpose()?,
                tenant_id,
                key_id: u.key,
                model: u.model,
                subject: u.subject,
                limit: Some(1_000_000),
            };
            if u.daily {
                for d in store.daily_usage(&f).await? {
                    line(&d)?;
                }
            } else {
                let rows = store.usage(&f).await?;
                if u.csv {
                    print!("{}", usage_csv(&rows));
                } else {
                    for r in rows {
                        line(&r)?;
                    }
                }
            }
        }
        What::Audit { limit } => {
            for e in store.audit_log(limit).await? {
                line(&e)?;
            }
        }
    }
    store.close().await;
    Ok(ExitCode::SUCCESS)
}
