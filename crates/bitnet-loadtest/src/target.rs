//! The target URL: `http://` only, and every address it resolves to must be loopback.

use crate::LoadtestError;
use std::net::{IpAddr, SocketAddr};

/// A parsed, resolved target whose addresses are all loopback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The URL as given.
    pub url: String,
    /// The `Host` header to send: the URL's `host[:port]`.
    pub host_header: String,
    /// The path before `/v1` (usually empty; never ends in `/`).
    pub base_path: String,
    /// The resolved addresses, all loopback, in resolver order.
    pub addrs: Vec<SocketAddr>,
}

/// Parses `url` (`http://host[:port][/prefix][/v1][/]`), resolves its host and checks that
/// every address is loopback (`127.0.0.0/8`, `::1`; `localhost` resolves to those).
///
/// # Errors
///
/// [`LoadtestError::InvalidUrl`] for anything but a plain `http://` URL (`https://` too),
/// [`LoadtestError::Resolve`] when the host does not resolve, and
/// [`LoadtestError::NotLoopback`] when any resolved address is not loopback.
pub async fn resolve_target(url: &str) -> Result<Target, LoadtestError> {
    let (host, port, host_header, base_path) = parse_url(url)?;
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| LoadtestError::Resolve {
                url: url.to_string(),
                message: format!("cannot resolve {host}: {e}"),
            })?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(LoadtestError::Resolve {
            url: url.to_string(),
            message: format!("{host} has no address"),
        });
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().to_canonical().is_loopback()) {
        return Err(LoadtestError::NotLoopback {
            url: url.to_string(),
            addr: bad.ip().to_string(),
        });
    }
    Ok(Target {
        url: url.to_string(),
        host_header,
        base_path,
        addrs,
    })
}

/// `(host without brackets, port, Host header, base path)` of an `http://` URL.
fn parse_url(url: &str) -> Result<(String, u16, String, String), LoadtestError> {
    let bad = |reason: String| LoadtestError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let trimmed = url.trim();
    let (scheme, rest) = trimmed
        .split_once("://")
        .ok_or_else(|| bad("expected http://host:port".into()))?;
    if !scheme.eq_ignore_ascii_case("http") {
        return Err(bad(format!(
            "scheme {scheme}:// is not supported; only plain http:// to a loopback address"
        )));
    }
    if rest.contains(['?', '#']) {
        return Err(bad("a query or fragment is not supported".into()));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported".into()));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in the host".into()))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad(format!("unexpected {p:?} after the host")))?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host".into()));
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad(format!("bad port {p:?}")))?,
    };
    let path = path.trim_end_matches('/');
    let base = path.strip_suffix("/v1").unwrap_or(path);
    Ok((
        host.to_string(),
        port,
        authority.to_string(),
        base.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_accepted() {
        let t = resolve_target("http://127.0.0.1:8080").await.unwrap();
        assert_eq!(t.addrs, vec!["127.0.0.1:8080".parse().unwrap()]);
        assert_eq!(
            (t.host_header.as_str(), t.base_path.as_str()),
            ("127.0.0.1:8080", "")
        );
        for url in [
            "http://127.0.0.1:8080/v1",
            "http://127.0.0.1:8080/v1/",
            "HTTP://127.0.0.1:8080/",
        ] {
            let t = resolve_target(url).await.unwrap();
            assert_eq!(t.base_path, "", "{url}");
        }
        let t = resolve_target("http://127.1.2.3:9/proxy/v1").await.unwrap();
        assert_eq!(t.base_path, "/proxy");
        let t = resolve_target("http://[::1]:9").await.unwrap();
        assert_eq!(t.addrs, vec!["[::1]:9".parse().unwrap()]);
        assert_eq!(t.host_header, "[::1]:9");
        let t = resolve_target("http://127.0.0.1").await.unwrap();
        assert_eq!(t.addrs[0].port(), 80);
        let t = resolve_target("http://localhost:8080").await.unwrap();
        assert!(!t.addrs.is_empty());
        assert!(t
            .addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 8080));
    }

    #[tokio::test]
    async fn non_loopback_refused() {
        for url in [
            "http://10.0.0.1:8080",
            "http://8.8.8.8",
            "http://[::ffff:10.0.0.1]:80",
            "http://0.0.0.0:8080",
        ] {
            match resolve_target(url).await {
                Err(e @ LoadtestError::NotLoopback { .. }) => {
                    assert!(e.to_string().contains(url), "{e}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        // Either it does not resolve here (no network) or it resolves to a public address.
        match resolve_target("http://example.com:80").await {
            Err(LoadtestError::NotLoopback { .. } | LoadtestError::Resolve { .. }) => {}
            other => panic!("example.com: {other:?}"),
        }
        // Mapped loopback is loopback.
        assert!(resolve_target("http://[::ffff:127.0.0.1]:80").await.is_ok());
    }

    #[tokio::test]
    async fn bad_urls_refused() {
        for url in [
            "https://127.0.0.1:8080",
            "ftp://127.0.0.1",
            "127.0.0.1:8080",
            "http://",
            "http://:8080",
            "http://127.0.0.1:notaport",
            "http://127.0.0.1:0",
            "http://127.0.0.1:70000",
            "http://user:pw@127.0.0.1:8080",
            "http://127.0.0.1:8080/v1?x=1",
            "http://[::1:8080",
            "http://::1:8080",
        ] {
            match resolve_target(url).await {
                Err(e @ LoadtestError::InvalidUrl { .. }) => {
                    assert!(e.to_string().contains(url), "{e}")
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let e = resolve_target("https://127.0.0.1:8080").await.unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }
}
