//! OIDC bearer tokens (JWTs from an organisation's identity provider) as an alternative to
//! API keys.
//!
//! A token is verified against a JWKS (a file, re-read when it changes, or an `http://` URL,
//! re-fetched every `refresh` and when a token names an unknown `kid`): asymmetric algorithms
//! only (RS*, PS*, ES256/384, EdDSA; never `none` or HMAC), the algorithm must fit the key,
//! and `iss`, `aud`, `exp` (and `nbf` when present) are checked with a leeway. The caller's
//! tenant is the value of a claim (dot paths such as `org.name` reach nested objects), and the
//! role is `admin` when a role claim (string or array) holds the admin value. Limits, models
//! and budget come from the tenant's *policy key* (an API key with an agreed alias, `sso` by
//! default), shared by all of the tenant's SSO users; see [`crate::Tenancy::authenticate`].

use crate::error::{Error, Result};
use crate::http::HttpUrl;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::{Duration, Instant, SystemTime};

/// Settings of OIDC token verification.
#[derive(Clone, Debug)]
pub struct OidcConfig {
    /// A JWKS file path or an `http://` URL.
    pub jwks: String,
    /// The required `iss`.
    pub issuer: String,
    /// Accepted `aud` values (a token needs one of them).
    pub audience: Vec<String>,
    /// The claim naming the tenant (dot path).
    pub tenant_claim: String,
    /// The claim holding roles (dot path; string or array).
    pub role_claim: String,
    /// The role value that makes a caller an admin.
    pub admin_role: String,
    /// Alias of the key whose limits a tenant's SSO callers share.
    pub policy_alias: String,
    /// Clock skew allowed on `exp` / `nbf`.
    pub leeway: Duration,
    /// How often the JWKS is reloaded.
    pub refresh: Duration,
}

impl OidcConfig {
    /// Defaults for everything but the JWKS, issuer and audience.
    pub fn new(jwks: &str, issuer: &str, audience: &[&str]) -> OidcConfig {
        OidcConfig {
            jwks: jwks.into(),
            issuer: issuer.into(),
            audience: audience.iter().map(|s| s.to_string()).collect(),
            tenant_claim: "tenant".into(),
            role_claim: "roles".into(),
            admin_role: "admin".into(),
            policy_alias: "sso".into(),
            leeway: Duration::from_secs(60),
            refresh: Duration::from_secs(300),
        }
    }
}

/// A verified token's caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// `sub`.
    pub subject: String,
    /// The tenant (name or id) from the tenant claim.
    pub tenant: String,
    /// Whether the role claim holds the admin role.
    pub admin: bool,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
}

enum Source {
    File(PathBuf),
    Url(HttpUrl),
}

struct Keys {
    /// `(kid, algorithms the key accepts, key)`.
    keys: Vec<(Option<String>, Vec<Algorithm>, DecodingKey)>,
    loaded: Instant,
    /// The file's modification time when it was read.
    mtime: Option<SystemTime>,
}

/// Verifies OIDC bearer tokens.
pub struct OidcVerifier {
    cfg: OidcConfig,
    source: Source,
    keys: RwLock<Keys>,
    reload: tokio::sync::Mutex<()>,
}

/// The algorithms a JWK may verify (its `alg` when given, else those of its key type).
fn algorithms(jwk: &Jwk) -> Vec<Algorithm> {
    use Algorithm::*;
    let family: Vec<Algorithm> = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => vec![ES256],
            EllipticCurve::P384 => vec![ES384],
            _ => vec![],
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        // Symmetric keys are never accepted: anyone who can read a JWKS could sign.
        AlgorithmParameters::OctetKey(_) => vec![],
    };
    match jwk.common.key_algorithm {
        Some(KeyAlgorithm::RSA1_5) | Some(KeyAlgorithm::RSA_OAEP) => vec![],
        Some(ka) => match ka.to_string().parse::<Algorithm>() {
            Ok(a) if family.contains(&a) => vec![a],
            _ => vec![],
        },
        None => family,
    }
}

/// A claim by dot path.
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    path.split('.').try_fold(claims, |v, k| v.get(k))
}

/// Whether a bearer token has the shape of a JWT (`header.payload.signature`, JSON header).
pub fn looks_like_jwt(token: &str) -> bool {
    token.starts_with("eyJ") && token.bytes().filter(|&b| b == b'.').count() == 2
}

impl OidcVerifier {
    /// Loads the JWKS; errors name the file or URL.
    pub async fn new(cfg: OidcConfig) -> Result<OidcVerifier> {
        if cfg.issuer.is_empty() {
            return Err(Error::invalid("oidc-issuer", "must not be empty"));
        }
        if cfg.audience.iter().all(|a| a.is_empty()) {
            return Err(Error::invalid(
                "oidc-audience",
                "give at least one audience",
            ));
        }
        let source = if cfg.jwks.starts_with("http://") || cfg.jwks.starts_with("https://") {
            Source::Url(HttpUrl::parse("oidc-jwks", &cfg.jwks)?)
        } else {
            Source::File(PathBuf::from(&cfg.jwks))
        };
        let mut v = OidcVerifier {
            cfg,
            source,
            keys: RwLock::new(Keys {
                keys: Vec::new(),
                loaded: Instant::now(),
                mtime: None,
            }),
            reload: tokio::sync::Mutex::new(()),
        };
        let keys = v.load().await?;
        *v.keys
            .get_mut()
            .map_err(|_| Error::invalid("oidc", "poisoned"))? = keys;
        Ok(v)
    }

    /// The settings.
    pub fn config(&self) -> &OidcConfig {
        &self.cfg
    }

    async fn load(&self) -> Result<Keys> {
        let (text, mtime, what) = match &self.source {
            Source::File(p) => {
                let what = p.display().to_string();
                let bad = |e: std::io::Error| Error::invalid("oidc-jwks", format!("{what}: {e}"));
                let mtime = std::fs::metadata(p).and_then(|m| m.modified()).ok();
                (tokio::fs::read(p).await.map_err(bad)?, mtime, what)
            }
            Source::Url(u) => {
                let (status, _, body) = u
                    .send("GET", &[("accept", "application/json")], Vec::new())
                    .await
                    .map_err(|e| Error::invalid("oidc-jwks", format!("{}: {e}", self.cfg.jwks)))?;
                if status != 200 {
                    return Err(Error::invalid(
                        "oidc-jwks",
                        format!("{}: HTTP {status}", self.cfg.jwks),
                    ));
                }
                (body.to_vec(), None, self.cfg.jwks.clone())
            }
        };
        let set: JwkSet = serde_json::from_slice(&text).map_err(|e| {
            Error::invalid(
                "oidc-jwks",
                format!("{what}: not a JWK set ({{\"keys\": […]}}): {e}"),
            )
        })?;
        let mut keys = Vec::new();
        for (i, jwk) in set.keys.iter().enumerate() {
            let algs = algorithms(jwk);
            let name = jwk.common.key_id.clone().unwrap_or_else(|| format!("#{i}"));
            if algs.is_empty() {
                tracing::warn!("{what}: key {name} skipped (symmetric or unsupported algorithm)");
                continue;
            }
            match DecodingKey::from_jwk(jwk) {
                Ok(k) => keys.push((jwk.common.key_id.clone(), algs, k)),
                Err(e) => tracing::warn!("{what}: key {name} skipped: {e}"),
            }
        }
        if keys.is_empty() {
            return Err(Error::invalid(
                "oidc-jwks",
                format!("{what}: no usable public key (RSA, P-256, P-384 or Ed25519)"),
            ));
        }
        Ok(Keys {
            keys,
            loaded: Instant::now(),
            mtime,
        })
    }

    /// Reloads the JWKS if it is due (or `force`d by an unknown `kid`: at most every 10 s, or
    /// every `refresh` when shorter); keeps the old keys when
    /// the reload fails.
    async fn maybe_reload(&self, force: bool) {
        let due = |k: &Keys| {
            let age = k.loaded.elapsed();
            if force {
                return age > self.cfg.refresh.min(Duration::from_secs(10));
            }
            match &self.source {
                Source::File(p) => {
                    age > Duration::from_secs(1)
                        && std::fs::metadata(p).and_then(|m| m.modified()).ok() != k.mtime
                        || age > self.cfg.refresh
                }
                Source::Url(_) => age > self.cfg.refresh,
            }
        };
        if !self.keys.read().map(|k| due(&k)).unwrap_or(false) {
            return;
        }
        let _g = self.reload.lock().await;
        if !self.keys.read().map(|k| due(&k)).unwrap_or(false) {
            return;
        }
        match self.load().await {
            Ok(k) => {
                if let Ok(mut w) = self.keys.write() {
                    *w = k;
                }
            }
            Err(e) => {
                tracing::warn!("reloading the OIDC JWKS failed (keeping the old keys): {e}");
                if let Ok(mut w) = self.keys.write() {
                    w.loaded = Instant::now();
                }
            }
        }
    }

    fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let k = self.keys.read().ok()?;
        let mut fits = k
            .keys
            .iter()
            .filter(|(_, algs, _)| algs.contains(&alg))
            .filter(|(id, _, _)| kid.is_none() || id.as_deref() == kid);
        let first = fits.next()?;
        // Without a `kid`, the key must be unambiguous.
        if kid.is_none() && fits.next().is_some() {
            return None;
        }
        Some(first.2.clone())
    }

    /// Verifies `token`; the error is a one-line reason for the 401.
    pub async fn verify(&self, token: &str) -> std::result::Result<Principal, String> {
        self.maybe_reload(false).await;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| format!("malformed token: {e}"))?;
        let alg = header.alg;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            return Err(format!(
                "algorithm {alg:?} is not accepted (asymmetric keys only)"
            ));
        }
        let kid = header.kid.as_deref();
        let key = match self.key_for(kid, alg) {
            Some(k) => k,
            None => {
                self.maybe_reload(true).await;
                self.key_for(kid, alg).ok_or_else(|| match kid {
                    Some(kid) => format!("no {alg:?} key with kid {kid:?} in the JWKS"),
                    None => format!("the token has no kid and the JWKS has no single {alg:?} key"),
                })?
            }
        };
        let mut v = Validation::new(alg);
        v.set_issuer(&[&self.cfg.issuer]);
        v.set_audience(&self.cfg.audience);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = self.cfg.leeway.as_secs();
        v.validate_nbf = true;
        let data = jsonwebtoken::decode::<Value>(token, &key, &v).map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => "the token has expired".to_string(),
            ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)".to_string(),
            ErrorKind::InvalidIssuer => format!("the token's issuer is not {}", self.cfg.issuer),
            ErrorKind::InvalidAudience => "the token's audience is not accepted".to_string(),
            ErrorKind::InvalidSignature => "the token's signature does not verify".to_string(),
            ErrorKind::MissingRequiredClaim(c) => format!("the token has no `{c}` claim"),
            _ => format!("invalid token: {e}"),
        })?;
        let c = &data.claims;
        let subject = c["sub"].as_str().unwrap_or_default().to_string();
        let tenant = match claim(c, &self.cfg.tenant_claim) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(format!(
                    "the token has no tenant claim `{}`",
                    self.cfg.tenant_claim
                ))
            }
        };
        let admin = match claim(c, &self.cfg.role_claim) {
            Some(Value::String(s)) => s.split(' ').any(|r| r == self.cfg.admin_role),
            Some(Value::Array(a)) => a.iter().any(|r| r.as_str() == Some(&self.cfg.admin_role)),
            _ => false,
        };
        Ok(Principal {
            subject,
            tenant,
            admin,
            expires_at: c["exp"].as_i64().unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn claims_by_path() {
        let c = json!({"org": {"name": "acme"}, "a.b": 1, "roles": ["x"]});
        assert_eq!(claim(&c, "org.name"), Some(&json!("acme")));
        assert_eq!(claim(&c, "a.b"), Some(&json!(1)));
        assert_eq!(claim(&c, "org.id"), None);
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOi.eyJzdWIi.sig"));
        assert!(!looks_like_jwt("bn-AbCdEf"));
        assert!(!looks_like_jwt("eyJ.a"));
    }
}
