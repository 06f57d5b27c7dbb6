//! A fast reader for the commonest upstream stream chunks: one choice whose
//! delta carries text (or nothing), perhaps with a finish reason, and the
//! usage chunk. A text answer is hundreds of such chunks, and reading them
//! through serde was the largest single cost per request in profiles.
//! Anything else (tool calls, errors, several choices, input this reader is
//! not sure about) returns `None`, and the caller reads the chunk with
//! serde, which stays the reference: the tests compare the two on every
//! shape.

use super::wire::{ChoiceIn, ChunkIn, DeltaIn, PromptDetailsIn, UsageIn};

/// Reads `data` if it is a plain text chunk; `None` means "use serde".
#[cfg(test)]
pub fn read(data: &str) -> Option<ChunkIn> {
    read_spanned(data).map(|(chunk, _)| chunk)
}

/// The delta field a chunk's one string is in.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Field {
    Content,
    ReasoningContent,
    Reasoning,
}

/// Where a plain chunk's one string sits: its field, and the byte range
/// of its body (between the quotes).
type Span = (Field, usize, usize);

/// A stream's reader of plain chunks. Servers frame every chunk of an
/// answer alike (the same id, model and keys, in the same order) and only
/// the text differs, so the bytes around the last plain chunk's string are
/// kept: a chunk with the same bytes around a single JSON string is that
/// chunk with other text, read without parsing the rest again.
#[derive(Debug, Default)]
pub struct FastReader {
    /// The bytes before the string (ending with its opening quote), then
    /// the bytes after it (starting with its closing quote).
    around: String,
    /// Where the bytes after the string start in `around`.
    at: usize,
    /// The string's field; `None` until a frame has been seen.
    field: Option<Field>,
}

impl FastReader {
    /// Reads `data` if it is a plain chunk; `None` means "use serde".
    pub fn read(&mut self, data: &str) -> Option<ChunkIn> {
        if let Some((field, text)) = self.framed(data) {
            return Some(chunk_of(field, text));
        }
        let (chunk, span) = read_spanned(data)?;
        if let Some((field, start, end)) = span {
            self.around.clear();
            self.around.push_str(&data[..start]);
            self.around.push_str(&data[end..]);
            self.at = start;
            self.field = Some(field);
        }
        Some(chunk)
    }

    /// The field and string of `data` if `data` is the last frame around
    /// one string.
    fn framed(&self, data: &str) -> Option<(Field, String)> {
        let field = self.field?;
        let (head, tail) = self.around.split_at(self.at);
        if data.len() < self.around.len() || !data.starts_with(head) || !data.ends_with(tail) {
            return None;
        }
        // On the opening quote: the string must end exactly where the tail
        // starts (an unescaped quote inside would end it early).
        let mut r = Reader::new(data, head.len() - 1);
        let text = r.string()?;
        (r.i == data.len() - tail.len() + 1).then_some((field, text))
    }
}

/// The chunk of a frame's `text` in `field`.
fn chunk_of(field: Field, text: String) -> ChunkIn {
    let mut delta = DeltaIn::default();
    let slot = match field {
        Field::Content => &mut delta.content,
        Field::ReasoningContent => &mut delta.reasoning_content,
        Field::Reasoning => &mut delta.reasoning,
    };
    *slot = Some(text);
    ChunkIn {
        choices: vec![ChoiceIn {
            delta: Some(delta),
            ..ChoiceIn::default()
        }],
        usage: None,
        error: None,
    }
}

/// Reads `data` if it is a plain chunk, with the span of its one string
/// when it is a chunk of nothing but a text (or reasoning) delta of the
/// first choice.
fn read_spanned(data: &str) -> Option<(ChunkIn, Option<Span>)> {
    let mut r = Reader::new(data, 0);
    let mut choices = Vec::new();
    let mut usage = None;
    let mut seen = 0;
    r.object(|r, key| {
        match key {
            "choices" => once(&mut seen, 0)?,
            "usage" => once(&mut seen, 1)?,
            "error" => once(&mut seen, 2)?,
            _ => {}
        }
        match key {
            "choices" => {
                if let Some(c) = r.choices()? {
                    choices = vec![c];
                }
            }
            "usage" if r.peek()? != b'n' => usage = Some(r.usage()?),
            // Only its absence is plain: an error goes to serde.
            "usage" | "error" => r.null()?,
            _ => r.skip()?,
        }
        Some(())
    })?;
    r.ws();
    if r.i != data.len() {
        return None;
    }
    let only_text = usage.is_none()
        && r.strings == 1
        && matches!(choices.as_slice(), [c] if c.index == 0 && c.finish_reason.is_none());
    let chunk = ChunkIn {
        choices,
        usage,
        error: None,
    };
    Some((chunk, r.span.filter(|_| only_text)))
}

/// The length of the run of plain string bytes at the start of `b`, and the
/// byte that ends it: `"`, `\\` or a control character (invalid in JSON).
fn plain_run(b: &[u8]) -> Option<(usize, u8)> {
    let n = find_special(b)?;
    Some((n, b[n]))
}

/// Where the first `"`, `\\` or control character in `b` is. Strings in
/// chunks are short (keys, a few words of text), too short for a vector
/// search to pay off, so eight bytes are tested at a time in a word.
fn find_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // The high bit of each byte of `w` that is zero: exact for the lowest
    // such byte, which is the one wanted.
    let zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut at = 0;
    for word in b.chunks_exact(8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let w = u64::from_le_bytes(bytes);
        let hits = zero(w ^ (ONES * u64::from(b'"')))
            | zero(w ^ (ONES * u64::from(b'\\')))
            // Below 0x20: subtracting 0x20 borrows into the high bit.
            | (w.wrapping_sub(ONES * 0x20) & !w & HIGH);
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    b[at..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .map(|n| at + n)
}

struct Reader<'a> {
    s: &'a str,
    i: usize,
    /// The last string read in a delta, and how many were read.
    span: Option<Span>,
    strings: u32,
}

impl<'a> Reader<'a> {
    fn new(s: &'a str, i: usize) -> Self {
        Reader {
            s,
            i,
            span: None,
            strings: 0,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.s.as_bytes()
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.i += 1)
    }

    /// Reads an object, calling `field` with the reader placed on each
    /// key's value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.ws();
            let key = self.plain_string()?;
            self.eat(b':')?;
            self.ws();
            field(self, key)?;
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `[]` or `[choice]`; more than one choice goes to serde.
    fn choices(&mut self) -> Option<Option<ChoiceIn>> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(None);
        }
        let mut choice = ChoiceIn::default();
        let mut seen = 0;
        self.object(|r, key| {
            match key {
                "index" => once(&mut seen, 0)?,
                "delta" => once(&mut seen, 1)?,
                "finish_reason" => once(&mut seen, 2)?,
                _ => {}
            }
            match key {
                "index" => choice.index = r.uint()?,
                "delta" => {
                    if r.peek()? == b'n' {
                        r.null()?;
                    } else {
                        choice.delta = Some(r.delta()?);
                    }
                }
                "finish_reason" => choice.finish_reason = r.opt_string()?,
                _ => r.skip()?,
            }
            Some(())
        })?;
        self.eat(b']')?;
        Some(Some(choice))
    }

    fn delta(&mut self) -> Option<DeltaIn> {
        let mut d = DeltaIn::default();
        // A key given twice is left to serde, which refuses it.
        let mut seen = 0;
        self.object(|r, key| {
            let (field, slot) = match key {
                "content" => (Field::Content, &mut d.content),
                "reasoning_content" => (Field::ReasoningContent, &mut d.reasoning_content),
                "reasoning" => (Field::Reasoning, &mut d.reasoning),
                "tool_calls" => {
                    once(&mut seen, 3)?;
                    return r.null();
                }
                _ => return r.skip(),
            };
            once(&mut seen, field as u8)?;
            let at = r.i;
            *slot = r.opt_string()?;
            if slot.is_some() {
                // The body runs from after the opening quote to the closing one.
                r.span = Some((field, at + 1, r.i - 1));
                r.strings += 1;
            }
            Some(())
        })?;
        Some(d)
    }

    fn usage(&mut self) -> Option<UsageIn> {
        let mut u = UsageIn {
            prompt_tokens: 0,
            completion_tokens: 0,
            prompt_tokens_details: None,
        };
        let mut seen = 0;
        self.object(|r, key| {
            match key {
                "prompt_tokens" => once(&mut seen, 0)?,
                "completion_tokens" => once(&mut seen, 1)?,
                "prompt_tokens_details" => once(&mut seen, 2)?,
                _ => {}
            }
            match key {
                "prompt_tokens" => u.prompt_tokens = r.uint()?,
                "completion_tokens" => u.completion_tokens = r.uint()?,
                "prompt_tokens_details" if r.peek()? != b'n' => {
                    let mut cached_tokens = None;
                    let mut seen = 0;
                    r.object(|r, key| {
                        if key == "cached_tokens" {
                            once(&mut seen, 0)?;
                        }
                        match key {
                            "cached_tokens" if r.peek()? != b'n' => cached_tokens = Some(r.uint()?),
                            _ => r.skip()?,
                        }
                        Some(())
                    })?;
                    u.prompt_tokens_details = Some(PromptDetailsIn { cached_tokens });
                }
                _ => r.skip()?,
            }
            Some(())
        })?;
        Some(u)
    }

    /// A non-negative integer that fits a `u32`.
    fn uint(&mut self) -> Option<u32> {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        let digits = &self.s[start..self.i];
        if digits.len() > 1 && digits.starts_with('0') {
            return None; // a leading zero: serde refuses it
        }
        digits.parse().ok()
    }

    fn null(&mut self) -> Option<()> {
        let end = self.i + 4;
        (self.s.get(self.i..end)? == "null").then(|| self.i = end)
    }

    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.peek()? {
            b'n' => self.null().map(|()| None),
            b'"' => self.string().map(Some),
            _ => None,
        }
    }

    /// A string without escapes (keys): borrowed.
    fn plain_string(&mut self) -> Option<&'a str> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let (len, stop) = plain_run(&self.bytes()[start..])?;
        if stop != b'"' {
            return None;
        }
        let end = start + len;
        self.i = end + 1;
        Some(&self.s[start..end])
    }

    /// A string value, escapes decoded.
    fn string(&mut self) -> Option<String> {
        if let Some(s) = self.plain_string() {
            return Some(s.to_owned());
        }
        if self.peek()? != b'"' {
            return None;
        }
        self.i += 1;
        let mut out = String::new();
        loop {
            let (len, stop) = plain_run(&self.bytes()[self.i..])?;
            // Both delimiters are ASCII: the slice ends on a char boundary.
            out.push_str(&self.s[self.i..self.i + len]);
            self.i += len + 1;
            match stop {
                b'"' => return Some(out),
                b'\\' => {}
                _ => return None, // a raw control character
            }
            let esc = self.peek()?;
            self.i += 1;
            out.push(match esc {
                b'"' => '"',
                b'\\' => '\\',
                b'/' => '/',
                b'b' => '\u{8}',
                b'f' => '\u{c}',
                b'n' => '\n',
                b'r' => '\r',
                b't' => '\t',
                b'u' => self.unicode()?,
                _ => return None,
            });
        }
    }

    /// The rest of a `\u` escape, with its low surrogate if it needs one.
    fn unicode(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if !(0xD800..0xE000).contains(&hi) {
            return char::from_u32(hi);
        }
        if hi >= 0xDC00 || self.s.get(self.i..self.i + 2)? != "\\u" {
            return None; // a lone surrogate: serde names the error
        }
        self.i += 2;
        let lo = self.hex4()?;
        if !(0xDC00..0xE000).contains(&lo) {
            return None;
        }
        char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.i += 4;
        u32::from_str_radix(h, 16).ok()
    }

    /// Skips any value, checking it as serde does: `None` for anything
    /// serde would refuse (or might: nesting deeper than `MAX_DEPTH`), so
    /// the fast reader never accepts a chunk serde refuses.
    fn skip(&mut self) -> Option<()> {
        self.skip_at(0)
    }

    fn skip_at(&mut self, depth: usize) -> Option<()> {
        /// Well under serde_json's recursion limit (128).
        const MAX_DEPTH: usize = 100;
        match self.peek()? {
            b'"' => self.skip_string(),
            b'{' if depth < MAX_DEPTH => self.object(|r, _| r.skip_at(depth + 1)),
            b'[' if depth < MAX_DEPTH => {
                self.i += 1;
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    self.ws();
                    self.skip_at(depth + 1)?;
                    self.ws();
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            b'n' => self.literal("null"),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.i + word.len();
        (self.s.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A JSON number: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.digits1()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits1()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// At least one digit.
    fn digits1(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    /// Skips a string, checking its escapes as serde does when it ignores
    /// a value (a `\u` needs four hex digits; surrogates are not paired).
    fn skip_string(&mut self) -> Option<()> {
        self.i += 1;
        loop {
            let (len, stop) = plain_run(&self.bytes()[self.i..])?;
            self.i += len + 1;
            match stop {
                b'"' => return Some(()),
                b'\\' => {
                    let esc = self.peek()?;
                    self.i += 1;
                    match esc {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            self.hex4()?;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a raw control character
            }
        }
    }
}

/// Marks `key` seen in `seen` (one bit per known key of an object): `None`
/// when it was seen already, as serde refuses a duplicate field.
fn once(seen: &mut u8, bit: u8) -> Option<()> {
    let mask = 1 << bit;
    (*seen & mask == 0).then(|| *seen |= mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::ChatEvent;
    use crate::protocol::openai::ChunkDecoder;

    /// The events serde's reading of `doc` gives.
    fn via_serde(doc: &str) -> Result<Vec<ChatEvent>, String> {
        let chunk: ChunkIn = serde_json::from_str(doc).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        ChunkDecoder::default()
            .push_chunk(chunk, &mut out)
            .map_err(|e| e.message)?;
        Ok(out)
    }

    fn via_fast(doc: &str) -> Option<Vec<ChatEvent>> {
        let chunk = read(doc)?;
        let mut out = Vec::new();
        ChunkDecoder::default().push_chunk(chunk, &mut out).ok()?;
        Some(out)
    }

    const HEAD: &str = r#""id":"chatcmpl-1","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o","system_fingerprint":"fp_1","#;

    #[test]
    fn plain_chunks_are_read_fast_and_as_serde_reads_them() {
        let choice = |delta: &str, finish: &str| {
            format!(
                r#"{{{HEAD}"choices":[{{"index":0,"delta":{delta},"logprobs":null,"finish_reason":{finish}}}]}}"#
            )
        };
        let docs = [
            choice(r#"{"role":"assistant","content":""}"#, "null"),
            choice(r#"{"content":"hello "}"#, "null"),
            choice(
                r#"{"content":"a \"quoted\" line\nnext\ttab \\ / \/ \b\f\r"}"#,
                "null",
            ),
            choice(
                r#"{"content":"caf\u00e9 \u4e2d \ud83d\ude00 raw é 中 😀"}"#,
                "null",
            ),
            choice(
                r#"{"content":null,"refusal":null,"tool_calls":null}"#,
                "null",
            ),
            choice(r#"{"reasoning_content":"think"}"#, "null"),
            choice(r#"{"reasoning":"think","content":"x"}"#, "null"),
            choice("{}", r#""stop""#),
            choice("{}", r#""length""#),
            choice("null", r#""content_filter""#),
            format!(r#"{{{HEAD}"choices":[],"usage":null}}"#),
            format!(r#"{{{HEAD}"choices":[],"usage":{{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}}}"#),
            format!(
                r#"{{{HEAD}"choices":[],"usage":{{"prompt_tokens":1200,"completion_tokens":80,"total_tokens":1280,"prompt_tokens_details":{{"cached_tokens":1024,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":64}}}}}}"#
            ),
            format!(r#"{{{HEAD}"choices":[],"usage":{{"prompt_tokens":3,"completion_tokens":0,"prompt_tokens_details":{{"cached_tokens":null}}}}}}"#),
            format!(r#"{{{HEAD}"choices":[{{"index":1,"delta":{{"content":"other choice"}}}}]}}"#),
            format!(
                r#" {{ {HEAD} "extra" : {{"a":[1,{{"b":"}}]"}}],"c":-1.5e3,"d":true}}, "choices" : [ {{ "delta" : {{ "content" : "spaced" }} , "index" : 0 }} ] , "usage":null }} "#
            ),
            r#"{"choices":[{"index":0,"delta":{"content":"no head","x":"\"}"}}],"obfuscation":"a\\b"}"#
                .to_string(),
        ];
        for doc in &docs {
            let fast = via_fast(doc).unwrap_or_else(|| panic!("not read fast: {doc}"));
            assert_eq!(Ok(fast), via_serde(doc), "{doc}");
        }
    }

    /// Chunks framed like the last plain one are read from their string
    /// alone, and give what serde gives; anything that is not exactly one
    /// string between the same bytes is read in full.
    #[test]
    fn chunks_framed_alike_are_read_from_their_string() {
        let text = |s: &str| {
            format!(
                r#"{{{HEAD}"choices":[{{"index":0,"delta":{{"content":"{s}"}},"logprobs":null,"finish_reason":null}}]}}"#
            )
        };
        let think = |s: &str| {
            format!(
                r#"{{{HEAD}"choices":[{{"index":0,"delta":{{"content":null,"reasoning_content":"{s}"}}}}]}}"#
            )
        };
        // (chunk, read from the frame?)
        let stream = [
            (think("first"), false),
            (think(r#"then \"more\""#), true),
            (text("hello"), false),
            (text(" world"), true),
            (text(""), true),
            (text(r#"caf\u00e9 \ud83d\ude00 é \\ \n"#), true),
            // Not one string between the frame's bytes: an unescaped quote
            // ends it early, an escaped closing quote runs it on.
            (text(r#"a","finish_reason":"stop"}],"x":{"y":""#), false),
            (text(r#"a\"#), false),
            (text("raw\u{1}control"), false),
            (text("after"), true),
            // Another frame: the finish chunk, then a different id.
            (
                format!(
                    r#"{{{HEAD}"choices":[{{"index":0,"delta":{{}},"finish_reason":"stop"}}]}}"#
                ),
                false,
            ),
            (text("same frame as before the finish"), true),
            (
                text("same frame").replace("chatcmpl-1", "chatcmpl-2"),
                false,
            ),
            (
                text("and the new frame is kept").replace("chatcmpl-1", "chatcmpl-2"),
                true,
            ),
        ];
        let mut reader = FastReader::default();
        let mut decoder = ChunkDecoder::default();
        for (doc, framed) in &stream {
            assert_eq!(reader.framed(doc).is_some(), *framed, "{doc}");
            reader.read(doc);
            let mut got = Vec::new();
            let got = decoder.decode(doc, &mut got).map(|()| got);
            match via_serde(doc) {
                Ok(want) => assert_eq!(got.ok(), Some(want), "{doc}"),
                Err(_) => assert!(got.is_err(), "{doc}"),
            }
        }
    }

    #[test]
    fn other_chunks_are_left_to_serde() {
        let docs = [
            // Tool calls, errors, several choices, a count past u32.
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5000000000,"completion_tokens":8}}"#,
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
            // What serde refuses: a lone surrogate, a raw control character,
            // a bad escape, wrong types, trailing bytes, a cut document.
            r#"{"choices":[{"index":0,"delta":{"content":"\ud83d"}}]}"#,
            "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\u{1}b\"}}]}",
            r#"{"choices":[{"index":0,"delta":{"content":"\x"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":5}}]}"#,
            r#"{"choices":[{"index":"0","delta":{"content":"a"}}]}"#,
            r#"{"choices":[]} x"#,
            r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"cut"#,
            r#"[]"#,
            // Ignored members serde still checks (found by fuzzing): a bad
            // escape, a bare word, a leading zero, broken nesting, a known
            // key twice.
            r#"{"ch)ices":[{"delta":{"content":"escap\d"}}],"choices":[]}"#,
            r#"{"choices":[],"x":nope}"#,
            r#"{"choices":[],"x":[1,}"#,
            r#"{"choices":[],"x":{"a" "b"}}"#,
            r#"{"choices":[],"x":01}"#,
            r#"{"choices":[{"index":00,"delta":{}}]}"#,
            r#"{"choices":[],"x":1.}"#,
            r#"{"choices":[],"choices":[]}"#,
            r#"{"choices":[{"index":0,"index":0,"delta":{}}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":1,"prompt_tokens":1}}"#,
        ];
        for doc in docs {
            assert!(read(doc).is_none(), "read fast: {doc}");
        }
        // serde gives the verdict on them: events, or an error.
        assert!(via_serde(docs[0]).is_ok_and(|e| !e.is_empty()));
        assert!(via_serde(docs[4]).is_err());
        for doc in &docs[13..] {
            assert!(via_serde(doc).is_err(), "serde reads {doc}");
        }
        // What serde ignores is still read fast when it is valid JSON.
        let ignored = r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"x":[-0.5e+3,true,false,null,{"y":"\u00e9\n"},[]]}"#;
        assert!(read(ignored).is_some());
        assert_eq!(via_fast(ignored), via_serde(ignored).ok());
    }
}
