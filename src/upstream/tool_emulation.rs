//! Tool calling for upstreams that have none (OnDemand): the model is asked,
//! in a system instruction, to answer with
//! `<function_call><tool>NAME</tool><args>{json}</args></function_call>`
//! blocks, and [`ToolCallParser`] takes such blocks back out of the streamed
//! answer so the client sees real tool calls and never the markup.

use crate::canonical::{ChatRequest, ContentPart, Role, ToolChoice};

const OPEN: &str = "<function_call>";
const CLOSE: &str = "</function_call>";

/// Whether `req` asks for emulated tools: tools are offered and not turned
/// off by `tool_choice: none`.
pub fn wanted(req: &ChatRequest) -> bool {
    !req.tools.is_empty() && req.tool_choice != Some(ToolChoice::None)
}

/// The system instruction that teaches the model the call format and lists
/// the offered tools with their JSON schemas.
pub fn instruction(req: &ChatRequest) -> String {
    let mut out = String::from(
        "You can call tools. To call one, answer with exactly this block:\n\
         <function_call><tool>NAME</tool><args>{\"param\": \"value\"}</args></function_call>\n\
         where NAME is one of the tools below and args is a JSON object matching its \
         parameters. Write one block per call; write nothing after the last block. \
         Results come back as <function_result> blocks; then answer the user normally.\n",
    );
    match &req.tool_choice {
        Some(ToolChoice::Required) => out.push_str("You must call at least one tool now.\n"),
        Some(ToolChoice::Tool(name)) => {
            out.push_str(&format!("You must call the tool `{name}` now.\n"))
        }
        _ => {}
    }
    out.push_str("Tools:\n");
    for t in &req.tools {
        out.push_str(&format!("- {}", t.name));
        if let Some(d) = t.description.as_deref().filter(|d| !d.is_empty()) {
            out.push_str(&format!(": {d}"));
        }
        out.push_str(&format!("\n  parameters: {}\n", t.parameters));
    }
    out
}

/// A call the assistant made earlier, rendered the way the model was told
/// to write it, so history reads consistently.
pub fn render_call(name: &str, arguments: &str) -> String {
    format!("{OPEN}<tool>{name}</tool><args>{arguments}</args>{CLOSE}")
}

/// A tool result, named by the call it answers (looked up in `req`).
pub fn render_result(req: &ChatRequest, call_id: &str, text: &str, is_error: bool) -> String {
    let name = req
        .messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .flat_map(|m| m.content.iter())
        .find_map(|p| match p {
            ContentPart::ToolCall { id, name, .. } if id == call_id => Some(name.as_str()),
            _ => None,
        })
        .unwrap_or("unknown");
    let status = if is_error { " error=\"true\"" } else { "" };
    format!("<function_result{status}><tool>{name}</tool><result>{text}</result></function_result>")
}

/// A piece of a parsed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    /// A complete call; `args` is compact JSON text of an object.
    Call {
        name: String,
        args: String,
    },
}

/// Streaming parser of `<function_call>` blocks. Text passes through at once
/// except from a possible `<function_call` prefix on, which is held until it
/// is known to be a block (or not), so markup never reaches the client and
/// ordinary text is never delayed longer than it must be.
#[derive(Debug, Default)]
pub struct ToolCallParser {
    /// Held text: a possible opening tag, or an open block.
    held: String,
    /// Inside a block (after a full `<function_call>`).
    in_block: bool,
    /// Right after a block: leading whitespace is dropped, since it only
    /// separates blocks.
    after_call: bool,
    calls: usize,
}

impl ToolCallParser {
    /// How many calls were parsed so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds one chunk of answer text.
    pub fn feed(&mut self, chunk: &str, out: &mut Vec<Piece>) {
        self.held.push_str(chunk);
        // Each pass consumes a block or all the plain text, so the loop ends
        // after at most one pass per block plus one.
        loop {
            if self.in_block {
                let Some(end) = self.held.find(CLOSE) else {
                    return;
                };
                let block: String = self.held.drain(..end + CLOSE.len()).collect();
                self.in_block = false;
                match parse_block(&block) {
                    Some((name, args)) => {
                        self.calls += 1;
                        self.after_call = true;
                        out.push(Piece::Call { name, args });
                    }
                    // Not a call we understand: the model's text, kept whole.
                    None => self.text(block, out),
                }
                continue;
            }
            if let Some(start) = self.held.find(OPEN) {
                let before: String = self.held.drain(..start).collect();
                self.text(before, out);
                self.in_block = true;
                continue;
            }
            // Keep back the longest tail that could still grow into OPEN.
            let keep = partial_open_len(&self.held);
            let emit_to = self.held.len() - keep;
            let plain: String = self.held.drain(..emit_to).collect();
            self.text(plain, out);
            return;
        }
    }

    /// Ends the answer: anything still held (an unfinished block or a
    /// dangling `<function_c`) is text, so nothing is cut silently.
    pub fn finish(&mut self, out: &mut Vec<Piece>) {
        let rest = std::mem::take(&mut self.held);
        self.in_block = false;
        self.text(rest, out);
    }

    fn text(&mut self, mut text: String, out: &mut Vec<Piece>) {
        if self.after_call {
            let trimmed = text.trim_start();
            if trimmed.is_empty() {
                return;
            }
            text = trimmed.to_owned();
            self.after_call = false;
        }
        if text.is_empty() {
            return;
        }
        match out.last_mut() {
            Some(Piece::Text(prev)) => prev.push_str(&text),
            _ => out.push(Piece::Text(text)),
        }
    }
}

/// Length of the longest suffix of `s` that is a proper prefix of OPEN.
fn partial_open_len(s: &str) -> usize {
    (1..OPEN.len())
        .rev()
        .find(|&n| {
            s.len() >= n && s.is_char_boundary(s.len() - n) && OPEN.starts_with(&s[s.len() - n..])
        })
        .unwrap_or(0)
}

/// Name and compact JSON arguments of one whole block, or `None` when it is
/// not a well-formed call.
fn parse_block(block: &str) -> Option<(String, String)> {
    let inner = block.strip_prefix(OPEN)?.strip_suffix(CLOSE)?;
    let name = between(inner, "<tool>", "</tool>")?.trim();
    if name.is_empty() {
        return None;
    }
    let args = match between(inner, "<args>", "</args>") {
        Some(raw) if !raw.trim().is_empty() => {
            let raw = strip_code_fence(raw.trim());
            let value: serde_json::Value = serde_json::from_str(raw).ok()?;
            if !value.is_object() {
                return None;
            }
            value.to_string()
        }
        // A call without arguments is a call with none.
        _ => "{}".to_owned(),
    };
    Some((name.to_owned(), args))
}

fn between<'a>(s: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = s.find(open)? + open.len();
    let len = s[start..].find(close)?;
    Some(&s[start..start + len])
}

/// Models sometimes wrap the JSON in a Markdown code fence.
fn strip_code_fence(s: &str) -> &str {
    let Some(body) = s.strip_prefix("```") else {
        return s;
    };
    let body = body.strip_prefix("json").unwrap_or(body);
    body.strip_suffix("```").unwrap_or(body).trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str]) -> Vec<Piece> {
        let mut p = ToolCallParser::default();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut out);
        }
        p.finish(&mut out);
        // Adjacent text pieces from separate feeds are one text for the test.
        let mut merged: Vec<Piece> = Vec::new();
        for piece in out {
            match (merged.last_mut(), piece) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, piece) => merged.push(piece),
            }
        }
        merged
    }

    fn call(name: &str, args: &str) -> Piece {
        Piece::Call {
            name: name.into(),
            args: args.into(),
        }
    }

    #[test]
    fn plain_text_passes_through() {
        assert_eq!(
            run(&["hello ", "a < b", " world"]),
            vec![Piece::Text("hello a < b world".into())]
        );
    }

    #[test]
    fn text_is_not_held_longer_than_needed() {
        let mut p = ToolCallParser::default();
        let mut out = Vec::new();
        p.feed("see <func", &mut out);
        assert_eq!(out, vec![Piece::Text("see ".into())]);
        out.clear();
        p.feed("k> ok", &mut out);
        assert_eq!(out, vec![Piece::Text("<funck> ok".into())]);
    }

    #[test]
    fn a_block_becomes_a_call_and_is_hidden() {
        let out = run(&[
            "Let me look. <function_call><tool>search</tool><args>{\"q\": \"rust\"}</args></function_call>\n",
        ]);
        assert_eq!(
            out,
            vec![
                Piece::Text("Let me look. ".into()),
                call("search", r#"{"q":"rust"}"#)
            ]
        );
    }

    #[test]
    fn a_block_split_across_chunks_anywhere_parses() {
        let text =
            "<function_call><tool>search</tool><args>{\"q\": \"x y\"}</args></function_call>";
        for cut in 1..text.len() {
            let out = run(&[&text[..cut], &text[cut..]]);
            assert_eq!(out, vec![call("search", r#"{"q":"x y"}"#)], "cut at {cut}");
        }
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        assert_eq!(run(&refs), vec![call("search", r#"{"q":"x y"}"#)]);
    }

    #[test]
    fn several_blocks_and_whitespace_between() {
        let out = run(&[
            "<function_call><tool>a</tool><args>{}</args></function_call>\n\n",
            "<function_call><tool>b</tool><args>{\"n\":1}</args></function_call>  ",
        ]);
        assert_eq!(out, vec![call("a", "{}"), call("b", r#"{"n":1}"#)]);
    }

    #[test]
    fn malformed_blocks_stay_text() {
        let bad_json = "<function_call><tool>a</tool><args>{oops</args></function_call>";
        assert_eq!(run(&[bad_json]), vec![Piece::Text(bad_json.into())]);
        let no_tool = "<function_call><args>{}</args></function_call>";
        assert_eq!(run(&[no_tool]), vec![Piece::Text(no_tool.into())]);
        let not_object = "<function_call><tool>a</tool><args>[1]</args></function_call>";
        assert_eq!(run(&[not_object]), vec![Piece::Text(not_object.into())]);
    }

    #[test]
    fn unfinished_blocks_are_not_cut() {
        let open = "text <function_call><tool>a</tool><args>{\"q\":";
        assert_eq!(run(&[open]), vec![Piece::Text(open.into())]);
        assert_eq!(
            run(&["tail <function_c"]),
            vec![Piece::Text("tail <function_c".into())]
        );
    }

    #[test]
    fn missing_args_mean_none_and_fences_are_tolerated() {
        assert_eq!(
            run(&["<function_call><tool>now</tool></function_call>"]),
            vec![call("now", "{}")]
        );
        assert_eq!(
            run(&[
                "<function_call><tool>a</tool><args>```json\n{\"k\":2}\n```</args></function_call>"
            ]),
            vec![call("a", r#"{"k":2}"#)]
        );
    }

    #[test]
    fn multibyte_text_near_a_held_prefix_is_safe() {
        assert_eq!(run(&["héllo <", "é"]), vec![Piece::Text("héllo <é".into())]);
    }

    #[test]
    fn the_instruction_lists_tools_and_choice() {
        let req = ChatRequest {
            tools: vec![crate::canonical::Tool {
                name: "search".into(),
                description: Some("Search the web".into()),
                parameters: serde_json::json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Tool("search".into())),
            ..Default::default()
        };
        assert!(wanted(&req));
        let text = instruction(&req);
        assert!(text.contains("- search: Search the web"), "{text}");
        assert!(text.contains("You must call the tool `search`"), "{text}");
        let off = ChatRequest {
            tool_choice: Some(ToolChoice::None),
            ..req
        };
        assert!(!wanted(&off));
    }
}
