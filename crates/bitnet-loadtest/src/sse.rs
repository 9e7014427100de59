//! An incremental server-sent-events parser.
//!
//! Body bytes are fed as they arrive ([`SseParser::feed`]); complete events are then taken
//! one by one ([`SseParser::next_event`]) as borrowed slices, so a warmed-up parser does not
//! allocate. Events may be split anywhere across feeds. Lines end in `\n` or `\r\n`, events
//! end at a blank line, comment lines (`: ping`) and fields other than `data` are ignored,
//! several `data:` lines of one event are joined with `\n` (the SSE rules), and an event
//! whose data is exactly `[DONE]` is reported as [`SseEvent::Done`].

/// One complete event.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent<'a> {
    /// The data of an event (for OpenAI streams: one JSON chunk).
    Data(&'a [u8]),
    /// `data: [DONE]`: the end of an OpenAI stream.
    Done,
}

/// Buffers partial lines and events between feeds. Reuse one per connection.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes fed and not yet consumed (`buf[pos..]`).
    buf: Vec<u8>,
    /// Start of the unconsumed bytes.
    pos: usize,
    /// How far past `pos` there is surely no `\n` (saves rescans of a long partial line).
    scanned: usize,
    /// The data lines of the event being read.
    data: Vec<u8>,
    /// Whether the event being read has a `data` field yet.
    has_data: bool,
    /// The previous call returned `data`; clear it before reading on.
    dispatched: bool,
}

impl SseParser {
    /// A parser with empty buffers.
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Forgets everything buffered (for the next response on a connection).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.pos = 0;
        self.scanned = 0;
        self.data.clear();
        self.has_data = false;
        self.dispatched = false;
    }

    /// Appends body bytes; take the events they complete with [`SseParser::next_event`].
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            // Compact rarely so a long stream does not grow the buffer.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event fed so far, or `None` until more bytes arrive.
    pub fn next_event(&mut self) -> Option<SseEvent<'_>> {
        if self.dispatched {
            self.data.clear();
            self.has_data = false;
            self.dispatched = false;
        }
        loop {
            let rest = &self.buf[self.pos..];
            let Some(nl) = rest
                .get(self.scanned..)
                .and_then(|r| r.iter().position(|&b| b == b'\n'))
                .map(|i| i + self.scanned)
            else {
                self.scanned = rest.len();
                return None;
            };
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            self.pos += nl + 1;
            self.scanned = 0;
            if line.is_empty() {
                if self.has_data {
                    self.dispatched = true;
                    return Some(if self.data == b"[DONE]" {
                        SseEvent::Done
                    } else {
                        SseEvent::Data(&self.data)
                    });
                }
                continue;
            }
            if line[0] == b':' {
                continue; // comment, e.g. `: ping`
            }
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &[][..]),
            };
            if field == b"data" {
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Owned copy of an event, for comparisons.
    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Data(String),
        Done,
    }

    fn drain(p: &mut SseParser, out: &mut Vec<Ev>) {
        while let Some(e) = p.next_event() {
            out.push(match e {
                SseEvent::Data(d) => Ev::Data(String::from_utf8(d.to_vec()).unwrap()),
                SseEvent::Done => Ev::Done,
            });
        }
    }

    fn parse_pieces(pieces: &[&[u8]]) -> Vec<Ev> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.feed(piece);
            drain(&mut p, &mut out);
        }
        out
    }

    const STREAM: &[u8] = b": ping\n\ndata: {\"choices\":[{\"text\":\"h\xc3\xa9\"}]}\n\n\
        : ping\r\n\r\ndata:{\"a\":1}\r\n\r\nevent: message\nid: 7\ndata: line1\ndata: line2\n\n\
        data: {\"error\":{\"message\":\"boom\"}}\n\n: ping\n\ndata: [DONE]\n\n";

    fn expected() -> Vec<Ev> {
        vec![
            Ev::Data("{\"choices\":[{\"text\":\"hé\"}]}".into()),
            Ev::Data("{\"a\":1}".into()),
            Ev::Data("line1\nline2".into()),
            Ev::Data("{\"error\":{\"message\":\"boom\"}}".into()),
            Ev::Done,
        ]
    }

    #[test]
    fn whole_stream() {
        assert_eq!(parse_pieces(&[STREAM]), expected());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(parse_pieces(&[a, b]), expected(), "split at {i}");
        }
    }

    #[test]
    fn split_at_every_pair_of_boundaries() {
        for i in 0..=STREAM.len() {
            for j in i..=STREAM.len() {
                let pieces = [&STREAM[..i], &STREAM[i..j], &STREAM[j..]];
                assert_eq!(parse_pieces(&pieces), expected(), "split at {i}, {j}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let pieces: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(parse_pieces(&pieces), expected());
    }

    #[test]
    fn pings_only_and_incomplete_event_give_nothing() {
        assert!(parse_pieces(&[b": ping\n\n: ping\n\n"]).is_empty());
        // No blank line yet: the event is not complete.
        assert!(parse_pieces(&[b"data: {\"a\":1}\n"]).is_empty());
        // An empty data field is still an event (with empty data).
        assert_eq!(parse_pieces(&[b"data:\n\n"]), vec![Ev::Data(String::new())]);
        // `[DONE]` with more text is data, not the end.
        assert_eq!(
            parse_pieces(&[b"data: [DONE]x\n\n"]),
            vec![Ev::Data("[DONE]x".into())]
        );
    }

    #[test]
    fn reset_forgets_partial_events() {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        p.feed(b"data: partial");
        drain(&mut p, &mut out);
        p.reset();
        p.feed(b"data: [DONE]\n\n");
        drain(&mut p, &mut out);
        assert_eq!(out, vec![Ev::Done]);
    }

    #[test]
    fn long_stream_does_not_grow_the_buffer() {
        let mut p = SseParser::new();
        let mut n = 0;
        for _ in 0..10_000 {
            p.feed(b"data: {\"choices\":[{\"text\":\"x\"}]}\n\n");
            while p.next_event().is_some() {
                n += 1;
            }
        }
        assert_eq!(n, 10_000);
        assert!(p.buf.capacity() < 4096, "{}", p.buf.capacity());
    }
}
