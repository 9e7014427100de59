//! OIDC bearer tokens: tokens signed here with RSA, P-256 and Ed25519 keys verify against a
//! JWKS file or URL; every check (signature, algorithm, issuer, audience, expiry, not-before,
//! claims) refuses what it should; tokens map to their tenant's policy key with the right role;
//! a JWKS that changes is picked up.

use bitnet_tenancy::oidc::{OidcConfig, OidcVerifier};
use bitnet_tenancy::{AuthError, NewKey, Role, Store, Tenancy, TenancyConfig};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ISS: &str = "https://idp.example.com/realms/acme";
const AUD: &str = "bitnet-api";

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

/// `(kid, algorithm, private key)` of the test keys.
fn signers() -> Vec<(&'static str, Algorithm, EncodingKey)> {
    vec![
        (
            "rsa1",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&data("rsa.pem")).unwrap(),
        ),
        (
            "ec1",
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&data("ec256.pem")).unwrap(),
        ),
        (
            "ed1",
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(&data("ed25519.pem")).unwrap(),
        ),
    ]
}

/// The public JWKS of `signers()[..n]` (the kid set on each).
fn jwks(n: usize) -> String {
    let keys = signers()
        .into_iter()
        .take(n)
        .map(|(kid, alg, k)| {
            // jsonwebtoken derives RSA and EC public JWKs; the Ed25519 public key was written
            // next to its private key by `openssl pkey -pubout` (base64url of the 32 bytes).
            let mut j: Jwk = if alg == Algorithm::EdDSA {
                let x = String::from_utf8(data("ed25519.x")).unwrap();
                serde_json::from_value(json!({"kty": "OKP", "crv": "Ed25519", "x": x.trim()}))
                    .unwrap()
            } else {
                Jwk::from_encoding_key(&k, alg).unwrap()
            };
            j.common.key_id = Some(kid.into());
            j
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn claims(tenant: &str, roles: Value) -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 600, "iat": now(),
           "tenant": tenant, "roles": roles})
}

fn sign(kid: Option<&str>, alg: Algorithm, claims: &Value) -> String {
    let key = signers()
        .into_iter()
        .find(|(_, a, _)| *a == alg)
        .map(|(_, _, k)| k)
        .unwrap();
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&h, claims, &key).unwrap()
}

fn config(jwks: &str) -> OidcConfig {
    let mut c = OidcConfig::new(jwks, ISS, &[AUD, "other"]);
    c.refresh = Duration::from_secs(1);
    c
}

#[tokio::test]
async fn tokens_verify_and_every_check_refuses() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("jwks.json");
    std::fs::write(&path, jwks(3)).unwrap();
    let v = OidcVerifier::new(config(path.to_str().unwrap()))
        .await
        .unwrap();
    let ok = claims("acme", json!(["admin", "dev"]));
    for (kid, alg, _) in signers() {
        let p = v.verify(&sign(Some(kid), alg, &ok)).await.unwrap();
        assert_eq!(
            (p.subject.as_str(), p.tenant.as_str(), p.admin),
            ("alice", "acme", true)
        );
    }
    // Nested claims and space-separated role strings.
    let mut c = OidcConfig::new(path.to_str().unwrap(), ISS, &[AUD]);
    c.tenant_claim = "org.name".into();
    c.role_claim = "scope".into();
    let v2 = OidcVerifier::new(c).await.unwrap();
    let mut nested = claims("x", json!([]));
    nested["org"] = json!({"name": "beta"});
    nested["scope"] = json!("openid admin");
    let p = v2
        .verify(&sign(Some("ec1"), Algorithm::ES256, &nested))
        .await
        .unwrap();
    assert_eq!((p.tenant.as_str(), p.admin), ("beta", true));

    let refuse = |t: String, why: &'static str| {
        let v = &v;
        async move {
            let e = v.verify(&t).await.unwrap_err();
            assert!(e.contains(why), "expected {why:?}, got {e:?}");
        }
    };
    let with = |k: &str, val: Value| {
        let mut c = ok.clone();
        c[k] = val;
        c
    };
    refuse(
        sign(
            Some("rsa1"),
            Algorithm::RS256,
            &with("exp", json!(now() - 120)),
        ),
        "expired",
    )
    .await;
    refuse(
        sign(
            Some("rsa1"),
            Algorithm::RS256,
            &with("nbf", json!(now() + 600)),
        ),
        "not valid yet",
    )
    .await;
    refuse(
        sign(
            Some("rsa1"),
            Algorithm::RS256,
            &with("iss", json!("https://evil")),
        ),
        "issuer",
    )
    .await;
    refuse(
        sign(
            Some("rsa1"),
            Algorithm::RS256,
            &with("aud", json!("someone-else")),
        ),
        "audience",
    )
    .await;
    let mut no_tenant = ok.clone();
    no_tenant.as_object_mut().unwrap().remove("tenant");
    refuse(
        sign(Some("rsa1"), Algorithm::RS256, &no_tenant),
        "tenant claim",
    )
    .await;
    let mut no_exp = ok.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    refuse(sign(Some("rsa1"), Algorithm::RS256, &no_exp), "`exp`").await;
    // Another token's payload under this signature.
    let a = sign(Some("rsa1"), Algorithm::RS256, &ok);
    let b = sign(
        Some("rsa1"),
        Algorithm::RS256,
        &with("sub", json!("mallory")),
    );
    let pa: Vec<&str> = a.split('.').collect();
    let pb: Vec<&str> = b.split('.').collect();
    refuse(format!("{}.{}.{}", pa[0], pb[1], pa[2]), "signature").await;
    // A kid that is not in the set, and an algorithm that does not fit the key.
    refuse(sign(Some("nope"), Algorithm::RS256, &ok), "kid").await;
    refuse(sign(Some("rsa1"), Algorithm::ES256, &ok), "kid").await;
    // HMAC (the classic key-confusion attack) and `none` are refused.
    let hs = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &ok,
        &EncodingKey::from_secret(b"k"),
    )
    .unwrap();
    refuse(hs, "not accepted").await;
    let none = format!("eyJhbGciOiJub25lIn0.{}.", pa[1]);
    refuse(none, "malformed").await;
    // No kid: fine when one key fits the algorithm.
    v.verify(&sign(None, Algorithm::EdDSA, &ok)).await.unwrap();
}

#[tokio::test]
async fn jwks_errors_name_the_source_and_rotation_is_picked_up() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("jwks.json");
    let e = OidcVerifier::new(config(path.to_str().unwrap()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("oidc-jwks") && e.contains("jwks.json"), "{e}");
    std::fs::write(
        &path,
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    )
    .unwrap();
    let e = OidcVerifier::new(config(path.to_str().unwrap()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no usable public key"), "{e}");
    std::fs::write(&path, "not json").unwrap();
    let e = OidcVerifier::new(config(path.to_str().unwrap()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a JWK set"), "{e}");

    // Rotation: a key added to the file is used once the file changes.
    std::fs::write(&path, jwks(1)).unwrap();
    let v = OidcVerifier::new(config(path.to_str().unwrap()))
        .await
        .unwrap();
    let t = sign(Some("ec1"), Algorithm::ES256, &claims("acme", json!([])));
    assert!(v.verify(&t).await.is_err());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&path, jwks(2)).unwrap();
    v.verify(&t).await.unwrap();

    // The same from a URL; an unknown kid forces a re-fetch.
    let body = std::sync::Arc::new(std::sync::Mutex::new(jwks(1)));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/.well-known/jwks.json", l.local_addr().unwrap());
    let b = body.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let text = b.lock().unwrap().clone();
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    let v = OidcVerifier::new(config(&url)).await.unwrap();
    assert!(v.verify(&t).await.unwrap_err().contains("kid"));
    *body.lock().unwrap() = jwks(3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    v.verify(&t).await.unwrap();
    let e = OidcVerifier::new(config("https://idp.example.com/jwks"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("oidc-jwks") && e.contains("http://"), "{e}");
}

#[tokio::test]
async fn tokens_map_to_the_tenants_policy_key() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("jwks.json");
    std::fs::write(&path, jwks(3)).unwrap();
    let db = format!("sqlite://{}", d.path().join("t.db").display());
    let store = Store::connect(&db, 2).await.unwrap();
    for t in ["acme", "beta", "gamma"] {
        store.create_tenant("cli:t", t, None).await.unwrap();
    }
    let policy = |tenant: &str, role: Role| NewKey {
        tenant: tenant.into(),
        alias: Some("sso".into()),
        role: Some(role),
        rpm: Some(7),
        ..Default::default()
    };
    let (acme, _) = store
        .create_key("cli:t", &policy("acme", Role::Admin))
        .await
        .unwrap();
    let (beta, _) = store
        .create_key("cli:t", &policy("beta", Role::User))
        .await
        .unwrap();
    drop(store);
    let t = Tenancy::open(&TenancyConfig {
        database_url: db,
        redis_url: None,
        journal_dir: d.path().join("journal"),
        key_cache_ttl: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(60),
        flush: Duration::from_millis(50),
        max_connections: 2,
        webhook: None,
        oidc: Some(config(path.to_str().unwrap())),
        file_retention: None,
    })
    .await
    .unwrap();
    let tok =
        |tenant: &str, roles: Value| sign(Some("rsa1"), Algorithm::RS256, &claims(tenant, roles));

    let a = t
        .authenticate(Some(&tok("acme", json!(["admin"]))))
        .await
        .unwrap();
    assert_eq!(a.key.id, acme.id);
    assert_eq!(a.key.rpm, Some(7));
    assert_eq!(a.key.role, Role::Admin);
    assert_eq!(a.subject.as_deref(), Some("oidc:alice"));
    let a = t
        .authenticate(Some(&tok("acme", json!(["dev"]))))
        .await
        .unwrap();
    assert_eq!(a.key.role, Role::User, "no admin role claim: a user");
    let a = t
        .authenticate(Some(&tok("beta", json!(["admin"]))))
        .await
        .unwrap();
    assert_eq!(a.key.id, beta.id);
    assert_eq!(a.key.role, Role::User, "the policy key caps the role");
    match t.authenticate(Some(&tok("gamma", json!([])))).await {
        Err(AuthError::Forbidden(m)) => assert!(m.contains("--alias sso"), "{m}"),
        other => panic!("{other:?}"),
    }
    match t.authenticate(Some(&tok("nobody", json!([])))).await {
        Err(AuthError::Forbidden(m)) => assert!(m.contains("does not exist"), "{m}"),
        other => panic!("{other:?}"),
    }
    let mut expired = claims("acme", json!([]));
    expired["exp"] = json!(now() - 3600);
    match t
        .authenticate(Some(&sign(Some("rsa1"), Algorithm::RS256, &expired)))
        .await
    {
        Err(AuthError::Token(m)) => assert!(m.contains("expired"), "{m}"),
        other => panic!("{other:?}"),
    }
    // API keys keep working beside tokens.
    let (_, secret) = t
        .store
        .create_key(
            "cli:t",
            &NewKey {
                tenant: "gamma".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let a = t.authenticate(Some(&secret)).await.unwrap();
    assert!(a.subject.is_none());
}
