//! A small one-request HTTP/1.1 client over plain TCP (hyper), for webhook deliveries, JWKS
//! downloads and `bitnet batch`. Plain `http://` only: this build links no TLS stack (terminate TLS in a proxy or
//! sidecar for https endpoints, or give a JWKS file).

use crate::error::{Error, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;

/// Largest response body read.
const MAX_BODY: usize = 16 << 20;

/// A checked `http://host[:port][/path]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or address.
    pub host: String,
    /// Port (80 when not given).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `url`; an error names `field` (the flag it came from).
    pub fn parse(field: &str, url: &str) -> Result<HttpUrl> {
        let bad = |m: &str| Error::invalid(field, format!("{url:?}: {m}"));
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            bad("only http:// URLs are supported (this build has no TLS: terminate TLS in a proxy)")
        })?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad("bad port"))?),
            None => (hostport, 80),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(HttpUrl {
            host: host.to_string(),
            port,
            path,
        })
    }

    /// Sends one request and returns the status, headers and body (at most 16 MiB). Errors
    /// are one-line strings for logs (connect, handshake, send, body).
    pub async fn send(
        &self,
        method: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> std::result::Result<(u16, hyper::HeaderMap, Bytes), String> {
        let stream = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connecting to {}:{}: {e}", self.host, self.port))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("handshake: {e}"))?;
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&self.path)
            .header("host", format!("{}:{}", self.host, self.port))
            .header(
                "user-agent",
                concat!("bitnet-rust/", env!("CARGO_PKG_VERSION")),
            );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("building the request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("sending: {e}"))?;
        let status = resp.status().as_u16();
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("reading the response: {e}"));
        conn.abort();
        Ok((status, parts.headers, body?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("f", "http://h:81/a?b").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("h", 81, "/a?b")
        );
        assert_eq!(HttpUrl::parse("f", "http://h").unwrap().path, "/");
        for bad in ["https://h/x", "http://:80/", "http://h:x/", "h/x"] {
            let e = HttpUrl::parse("webhook-url", bad).unwrap_err().to_string();
            assert!(e.contains("webhook-url"), "{e}");
        }
    }
}
