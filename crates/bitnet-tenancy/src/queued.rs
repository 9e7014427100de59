//! A usage row on its way from a request to the meter's batch writer, held without a heap
//! allocation per request: the tenant, key, model and finish reason repeat from request to
//! request and are interned per thread (a reference count, not a copy), the request id is
//! kept inline. Allocations made by request threads and freed in bulk by the writer were a
//! measurable cost of the authenticated request path (glibc's allocator).

use crate::usage::UsageRow;
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::Arc;

/// Interned strings kept per thread before the table is emptied (tenants, keys and models are
/// few; this bounds the table against a stream of distinct values).
const INTERNED_MAX: usize = 4096;

/// Longest text kept inline.
const INLINE: usize = 46;

/// Text kept inline when short, else on the heap.
enum Text {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<str>),
}

impl Text {
    fn new(s: &str) -> Text {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE => {
                let mut buf = [0u8; INLINE];
                buf[..s.len()].copy_from_slice(s.as_bytes());
                Text::Inline { len, buf }
            }
            _ => Text::Heap(s.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // A whole `&str` was copied, so the bytes are UTF-8; the fallback is unreachable.
            Text::Inline { len, buf } => {
                std::str::from_utf8(&buf[..usize::from(*len)]).unwrap_or("")
            }
            Text::Heap(s) => s,
        }
    }
}

/// The shared copy of `s` from this thread's table.
fn intern(s: &str) -> Arc<str> {
    thread_local! {
        static TABLE: RefCell<HashSet<Arc<str>>> = RefCell::new(HashSet::new());
    }
    TABLE.with(|t| {
        let Ok(mut t) = t.try_borrow_mut() else {
            return Arc::from(s);
        };
        if let Some(a) = t.get(s) {
            return a.clone();
        }
        if t.len() >= INTERNED_MAX {
            t.clear();
        }
        let a: Arc<str> = Arc::from(s);
        t.insert(a.clone());
        a
    })
}

/// An owned usage row (see the module documentation).
pub(crate) struct QueuedRow {
    request_id: Text,
    ts_ms: i64,
    tenant_id: Arc<str>,
    key_id: Arc<str>,
    model: Arc<str>,
    prompt_tokens: i64,
    completion_tokens: i64,
    ttft_ms: Option<i64>,
    duration_ms: i64,
    status: i64,
    finish_reason: Arc<str>,
    subject: Option<Box<str>>,
}

impl QueuedRow {
    pub(crate) fn new(r: &UsageRow<'_>) -> QueuedRow {
        QueuedRow {
            request_id: Text::new(&r.request_id),
            ts_ms: r.ts_ms,
            tenant_id: intern(&r.tenant_id),
            key_id: intern(&r.key_id),
            model: intern(&r.model),
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            ttft_ms: r.ttft_ms,
            duration_ms: r.duration_ms,
            status: r.status,
            finish_reason: intern(&r.finish_reason),
            subject: r.subject.as_deref().map(Box::from),
        }
    }

    /// The row, borrowing this one's text.
    pub(crate) fn as_row(&self) -> UsageRow<'_> {
        UsageRow {
            request_id: Cow::Borrowed(self.request_id.as_str()),
            ts_ms: self.ts_ms,
            tenant_id: Cow::Borrowed(&self.tenant_id),
            key_id: Cow::Borrowed(&self.key_id),
            model: Cow::Borrowed(&self.model),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            ttft_ms: self.ttft_ms,
            duration_ms: self.duration_ms,
            status: self.status,
            finish_reason: Cow::Borrowed(&self.finish_reason),
            subject: self.subject.as_deref().map(Cow::Borrowed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(id: &'a str, subject: Option<&'a str>) -> UsageRow<'a> {
        UsageRow {
            request_id: Cow::Borrowed(id),
            ts_ms: 5,
            tenant_id: Cow::Borrowed("ten_a"),
            key_id: Cow::Borrowed("key_a"),
            model: Cow::Borrowed("m"),
            prompt_tokens: 1,
            completion_tokens: 2,
            ttft_ms: Some(3),
            duration_ms: 4,
            status: 200,
            finish_reason: Cow::Borrowed("stop"),
            subject: subject.map(Cow::Borrowed),
        }
    }

    #[test]
    fn rows_come_back_as_they_went_in() {
        let long = "chatcmpl-".to_string() + &"é".repeat(40);
        for id in [
            "",
            "cmpl-01a23faa9c2f76709a949bc7f24008f2",
            &"x".repeat(INLINE),
            &long,
        ] {
            for subject in [None, Some("oidc:\"q\" é")] {
                let r = row(id, subject);
                assert_eq!(QueuedRow::new(&r).as_row(), r);
            }
        }
    }

    #[test]
    fn interned_text_is_shared() {
        let (a, b) = (
            QueuedRow::new(&row("1", None)),
            QueuedRow::new(&row("2", None)),
        );
        assert!(Arc::ptr_eq(&a.tenant_id, &b.tenant_id));
        assert!(Arc::ptr_eq(&a.finish_reason, &b.finish_reason));
    }
}
