//! A tolerant Server-Sent Events reader for upstream streams. Real servers
//! send comments, `\r\n` line ends, `data:` with or without the space, and
//! `event:` lines; all of it is accepted.

/// One dispatched SSE event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    #[error("SSE line longer than {0} bytes")]
    LineTooLong(usize),
}

/// Incremental SSE parser: feed it bytes as they arrive, take events out.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Start of the first unread byte in `buf`.
    pos: usize,
    current: SseEvent,
    has_data: bool,
    /// `current` was handed out: cleared (keeping its capacity) on the
    /// next call.
    dispatched: bool,
    max_line: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(Self::DEFAULT_MAX_LINE)
    }
}

impl SseParser {
    /// Lines longer than this are refused rather than buffered forever.
    pub const DEFAULT_MAX_LINE: usize = 8 * 1024 * 1024;

    /// A parser refusing lines longer than `max_line` bytes.
    pub fn new(max_line: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            pos: 0,
            current: SseEvent::default(),
            has_data: false,
            dispatched: false,
            max_line,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if one has fully arrived. It is lent, not
    /// given: the parser reuses its buffers for the next one.
    pub fn next_event(&mut self) -> Result<Option<&SseEvent>, SseError> {
        if self.dispatched {
            self.dispatched = false;
            self.current.data.clear();
            self.current.event = None;
        }
        loop {
            let rest = &self.buf[self.pos..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > self.max_line {
                    return Err(SseError::LineTooLong(self.max_line));
                }
                self.compact();
                return Ok(None);
            };
            let mut line = &rest[..nl];
            self.pos += nl + 1;
            if let Some(stripped) = line.strip_suffix(b"\r") {
                line = stripped;
            }
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    self.dispatched = true;
                    return Ok(Some(&self.current));
                }
                self.current.event = None;
                continue;
            }
            if line[0] == b':' {
                continue;
            }
            let (field, value) = match memchr::memchr(b':', line) {
                Some(i) => {
                    let v = &line[i + 1..];
                    (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
                }
                None => (line, &b""[..]),
            };
            // Valid UTF-8 is the rule: check it the fast way first.
            let value = match std::str::from_utf8(value) {
                Ok(s) => std::borrow::Cow::Borrowed(s),
                Err(_) => String::from_utf8_lossy(value),
            };
            match field {
                b"data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(&value);
                    self.has_data = true;
                }
                b"event" => self.current.event = Some(value.into_owned()),
                _ => {}
            }
        }
    }

    /// Takes the final event of a stream that ended without a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.pos < self.buf.len() {
            self.push(b"\n");
            if let Ok(Some(ev)) = self.next_event() {
                return Some(ev.clone());
            }
        }
        if self.has_data {
            self.has_data = false;
            return Some(std::mem::take(&mut self.current));
        }
        None
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(input: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for chunk in input {
            p.push(chunk);
            while let Some(ev) = p.next_event().unwrap() {
                out.push(ev.clone());
            }
        }
        out.extend(p.finish());
        out
    }

    #[test]
    fn plain_and_quirky_streams_parse_the_same() {
        let plain = all(&[b"data: {\"a\":1}\n\ndata: [DONE]\n\n"]);
        let quirky = all(&[
            b": keep-alive\r\n\r\nevent: message\r\ndata:{\"a\"",
            b":1}\r\n\r\ndata:[DONE]",
        ]);
        assert_eq!(plain.len(), 2);
        assert_eq!(plain[0].data, "{\"a\":1}");
        assert_eq!(plain[1].data, "[DONE]");
        assert_eq!(quirky[0].data, plain[0].data);
        assert_eq!(quirky[0].event.as_deref(), Some("message"));
        assert_eq!(quirky[1].data, "[DONE]");
    }

    #[test]
    fn multi_line_data_joins_with_newline() {
        let evs = all(&[b"event: x\ndata: a\ndata: b\n\n"]);
        assert_eq!(evs[0].data, "a\nb");
        assert_eq!(evs[0].event.as_deref(), Some("x"));
    }

    #[test]
    fn overlong_lines_are_refused() {
        let mut p = SseParser::new(8);
        p.push(b"data: 0123456789");
        assert_eq!(p.next_event(), Err(SseError::LineTooLong(8)));
    }
}
