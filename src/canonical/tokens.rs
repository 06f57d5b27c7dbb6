//! Local token counting (o200k), for upstreams that report no usage and for
//! `count_tokens`.
//!
//! Counting must not hurt anyone else, whatever a client sends:
//!
//! - The tokenizer is `bpe-openai`: linear in its input, with a regex engine
//!   that does not backtrack or recurse, so megabytes of spaces or of one
//!   "word" cost milliseconds and cannot overflow a stack.
//! - Its tables are loaded on the first count, on the counting pool, not at
//!   start: a gateway whose upstreams report usage never pays. They are
//!   only what counting reads (about 14 MiB, cut from bpe-openai's 35 MiB
//!   by `build.rs`), embedded deflated (4 MiB of the binary).
//! - Big inputs are counted on a small pool of blocking threads, never on an
//!   HTTP worker; at most [`MAX_WAITING`] counts wait for it, and beyond that
//!   a count is refused ([`CountError::Busy`]) rather than queued.
//! - Small inputs (the common case) are counted in place: a thread hop would
//!   cost more than the count.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use bpe_openai::byte_pair_encoding::BytePairEncoding;
use bpe_openai::Tokenizer;
use tokio::sync::Semaphore;

use super::{ChatRequest, ContentPart};

/// Texts up to this many bytes are counted in place once the tables are
/// loaded (well under a millisecond).
const INLINE_BYTES: usize = 16 * 1024;
/// Counts running at once on the blocking pool: one, so a flood of huge
/// counts takes at most one core from the HTTP workers.
const RUNNING: usize = 1;
/// Counts that may wait for the pool before new ones are refused.
pub const MAX_WAITING: usize = 32;

static POOL: Pool = Pool::new(RUNNING, MAX_WAITING);
/// Set once the tables are loaded (or failed to), so in-place counts never
/// load them.
static LOADED: OnceLock<Option<Tokenizer>> = OnceLock::new();

/// o200k's counting tables, written by `build.rs`.
static TABLES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/o200k_count.bin.deflate"));

/// o200k's pre-tokenizer, as bpe-openai writes it: tiktoken's pattern with
/// its negative look-ahead `\s+(?!\S)` rewritten as a one-character
/// look-ahead (the second pattern) that the splitter drops from the match.
const O200K_WORDS: &str = concat!(
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|\\p{N}{1,3}",
    "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*",
    "|\\s*[\\r\\n]+",
    "|\\s+$",
);

fn load() -> Result<Tokenizer, String> {
    // Read as a stream: no copy of the 12 MB inflated tables is ever whole.
    let tables = std::io::BufReader::new(flate2::read::DeflateDecoder::new(TABLES));
    let bpe: BytePairEncoding = rmp_serde::from_read(tables).map_err(|e| e.to_string())?;
    let t = Tokenizer::new_lookahead(
        bpe,
        &[(O200K_WORDS, false), ("\\s+\\s", true), ("\\s+", false)],
        false,
    )
    .map_err(|e| e.to_string());
    // Loading grew and dropped its tables several times (about as much
    // again as they keep), and read the embedded tables once: hand both
    // back now.
    crate::support::memory::release(true);
    crate::support::memory::forget(TABLES);
    t
}

/// Why a count did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CountError {
    #[error("too many token counts are waiting; retry later")]
    Busy,
    #[error("token counting failed")]
    Failed,
}

/// A request's prompt count, computed at most once. It is a cache, not part
/// of the request's value: two requests compare equal whatever it holds.
#[derive(Debug, Clone, Default)]
pub struct PromptTokens(OnceLock<u32>);

impl PartialEq for PromptTokens {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl PromptTokens {
    /// The count, if it is known.
    pub fn get(&self) -> Option<u32> {
        self.0.get().copied()
    }
}

fn tokenizer() -> Option<&'static Tokenizer> {
    LOADED
        .get_or_init(|| {
            let started = std::time::Instant::now();
            match load() {
                Ok(t) => {
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(ms, "tokenizer loaded");
                    Some(t)
                }
                Err(error) => {
                    // Not reachable from outside (the tables are built into
                    // the binary); counts become estimates rather than errors.
                    tracing::error!(%error, "tokenizer tables unreadable; counts are estimates");
                    None
                }
            }
        })
        .as_ref()
}

/// The exact count, or the estimate if the tables could not be read.
fn exact(text: &str) -> u32 {
    match tokenizer() {
        Some(t) => u32::try_from(t.count(text)).unwrap_or(u32::MAX),
        None => estimate(text.len()),
    }
}

/// What a count is when it cannot be made: about four bytes a token.
pub fn estimate(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(4)).unwrap_or(u32::MAX)
}

/// Tokens in `text`, counted here and now when that is cheap; else the
/// estimate. Async callers use [`count_text`] for an exact count of anything.
pub fn count_text_now(text: &str) -> u32 {
    if text.is_empty() {
        return 0;
    }
    if text.len() <= INLINE_BYTES && LOADED.get().is_some() {
        exact(text)
    } else {
        estimate(text.len())
    }
}

/// Blocking threads for counting, with a bound on the counts that wait.
struct Pool {
    running: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Pool {
    const fn new(running: usize, max_waiting: usize) -> Self {
        Pool {
            running: Semaphore::const_new(running),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Runs `work` (which counts about `bytes` bytes of text) in place when
    /// it is small and the tables are loaded, else on a blocking thread.
    async fn run<T: Send + 'static>(
        &'static self,
        bytes: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CountError> {
        if bytes <= INLINE_BYTES && LOADED.get().is_some() {
            return Ok(work());
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if let Some(m) = crate::metrics::get() {
                m.tokenizer_busy.inc();
            }
            return Err(CountError::Busy);
        }
        let permit = self.running.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(permit) = permit else {
            return Err(CountError::Failed);
        };
        // The permit goes with the work: a request cancelled meanwhile does
        // not free the thread before the count it started is done.
        let done = tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await;
        done.map_err(|e| {
            tracing::error!(error = %e, "token counting failed");
            crate::metrics::task_failed("tokenizer");
            CountError::Failed
        })
    }
}

/// Exact tokens in `text`, off the HTTP workers when it is big.
pub async fn count_text(text: String) -> Result<u32, CountError> {
    if text.is_empty() {
        return Ok(0);
    }
    POOL.run(text.len(), move || exact(&text)).await
}

/// The prompt tokens of `req` (system, messages, tools), counted once and
/// remembered in the request.
pub async fn count_request(req: &Arc<ChatRequest>) -> Result<u32, CountError> {
    if let Some(n) = req.prompt_tokens.get() {
        return Ok(n);
    }
    let shared = req.clone();
    let n = POOL
        .run(text_bytes(req), move || request_with(&shared, exact))
        .await?;
    let _ = req.prompt_tokens.0.set(n);
    Ok(n)
}

/// The prompt tokens of `req` when known or cheap to count now; else the
/// estimate. For synchronous encoders, after [`count_request`] ran.
pub fn request_tokens_now(req: &ChatRequest) -> u32 {
    if let Some(n) = req.prompt_tokens.get() {
        return n;
    }
    request_with(req, count_text_now)
}

/// Per-message overhead of chat formatting, as OpenAI documents it.
const PER_MESSAGE: u32 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: u32 = 3;
/// A flat charge for images, roughly what vision models bill for a small one.
const IMAGE_TOKENS: u32 = 85;

fn request_with(req: &ChatRequest, count: impl Fn(&str) -> u32 + Copy) -> u32 {
    let mut total = REPLY_PRIMING;
    if let Some(system) = &req.system {
        total = total.saturating_add(PER_MESSAGE + count(system));
    }
    for m in &req.messages {
        total = total.saturating_add(PER_MESSAGE);
        for part in &m.content {
            total = total.saturating_add(part_with(part, count));
        }
    }
    for tool in &req.tools {
        total = total.saturating_add(count(&tool.name));
        if let Some(d) = &tool.description {
            total = total.saturating_add(count(d));
        }
        total = total.saturating_add(count(&tool.parameters.to_string()));
    }
    total
}

fn part_with(part: &ContentPart, count: impl Fn(&str) -> u32 + Copy) -> u32 {
    match part {
        ContentPart::Text(t) => count(t),
        ContentPart::Image(_) => IMAGE_TOKENS,
        ContentPart::ToolCall {
            name, arguments, ..
        } => count(name).saturating_add(count(arguments)),
        ContentPart::ToolResult { content, .. } => content
            .iter()
            .fold(0u32, |n, p| n.saturating_add(part_with(p, count))),
        ContentPart::Thinking { text, .. } => count(text),
        ContentPart::EncryptedReasoning { summary, .. } => count(summary),
        ContentPart::RedactedThinking { .. } => 0,
    }
}

/// About how many bytes of text counting `req` reads, to choose where to
/// count it.
fn text_bytes(req: &ChatRequest) -> usize {
    fn part(p: &ContentPart) -> usize {
        match p {
            ContentPart::Text(t) => t.len(),
            ContentPart::Image(_) | ContentPart::RedactedThinking { .. } => 0,
            ContentPart::ToolCall {
                name, arguments, ..
            } => name.len() + arguments.len(),
            ContentPart::ToolResult { content, .. } => content.iter().map(part).sum(),
            ContentPart::Thinking { text, .. } => text.len(),
            ContentPart::EncryptedReasoning { summary, .. } => summary.len(),
        }
    }
    let system = req.system.as_ref().map_or(0, String::len);
    let messages: usize = req
        .messages
        .iter()
        .flat_map(|m| m.content.iter())
        .map(part)
        .sum();
    // Tool schemas are small next to the limit; a rough size will do.
    let tools: usize = req
        .tools
        .iter()
        .map(|t| t.name.len() + t.description.as_ref().map_or(0, String::len) + 256)
        .sum();
    system + messages + tools
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::{Message, Role};

    #[tokio::test]
    async fn counts_are_real_o200k_counts() {
        // Reference counts from OpenAI's own o200k_base encoder.
        for (text, n) in [
            ("hello world", 2),
            ("  leading spaces\n\n\ttabs  trailing   ", 9),
            ("naïve café 東京 🎉 emoji's can't", 10),
            ("fn main() {\n    println!(\"hi\");\n}\n", 10),
        ] {
            assert_eq!(count_text(text.to_owned()).await, Ok(n), "{text:?}");
            // Once loaded, small texts are counted in place, exactly.
            assert_eq!(count_text_now(text), n, "{text:?}");
        }
        assert_eq!(count_text(String::new()).await, Ok(0));
        let req = Arc::new(ChatRequest {
            messages: vec![Message::text(Role::User, "hello world")],
            ..Default::default()
        });
        assert_eq!(
            count_request(&req).await,
            Ok(REPLY_PRIMING + PER_MESSAGE + 2)
        );
        assert_eq!(
            req.prompt_tokens.get(),
            Some(REPLY_PRIMING + PER_MESSAGE + 2)
        );
    }

    /// The cut tables count exactly as bpe-openai's whole o200k tokenizer,
    /// on texts of every kind (scripts, digits, spaces, punctuation, code,
    /// bytes that need byte-level tokens).
    #[test]
    fn cut_tables_count_as_the_whole_tokenizer() {
        let whole = bpe_openai::o200k_base();
        let ours = tokenizer().unwrap();
        let pieces = [
            "hello",
            " world",
            "  ",
            "\n\n",
            "\t",
            "東京",
            "🎉",
            "naïve",
            "can't",
            "1234567",
            "fn main() {",
            "}",
            "Ωmega",
            "ÅÄÖ",
            "\r\n",
            "---",
            "https://example.com/a?b=c",
            "ZZZZ",
            "ａｂｃ",
            "\u{200d}",
            "e\u{301}",
            "Привет",
            "مرحبا",
            "   \n  ",
        ];
        // A small deterministic generator: texts glued from the pieces.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2_000 {
            let mut text = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            assert_eq!(
                ours.count(text.as_str()),
                whole.count(text.as_str()),
                "{text:?}"
            );
        }
        let prose = include_str!("../../README.md");
        assert_eq!(ours.count(prose), whole.count(prose));
    }

    #[tokio::test]
    async fn hostile_texts_count_quickly_and_without_panic() {
        let spaces = " ".repeat(1_000_000);
        let n = count_text(spaces).await.map_err(|e| e.to_string());
        assert!(matches!(n, Ok(n) if (1_000..200_000).contains(&n)), "{n:?}");
        // One "word" of a megabyte: quadratic for a naive BPE merge.
        let word = "ab".repeat(500_000);
        let n = count_text(word).await.map_err(|e| e.to_string());
        assert!(matches!(n, Ok(n) if n > 1_000), "{n:?}");
    }

    #[tokio::test]
    async fn counts_beyond_the_waiting_bound_are_refused() {
        static SMALL: Pool = Pool::new(1, 3);
        let text = "many words ".repeat(100_000);
        let counts = futures_util::future::join_all((0..8).map(|_| {
            let text = text.clone();
            SMALL.run(text.len(), move || exact(&text))
        }))
        .await;
        let busy = counts
            .iter()
            .filter(|c| **c == Err(CountError::Busy))
            .count();
        // One runs, three wait, the other four are refused at once.
        assert_eq!(busy, 4, "{counts:?}");
        let done: Vec<_> = counts.iter().filter_map(|c| c.ok()).collect();
        assert!(
            done.len() == 4 && done.iter().all(|n| *n == done[0] && *n > 100_000),
            "{done:?}"
        );
        assert_eq!(SMALL.waiting.load(Ordering::Acquire), 0);
    }

    #[test]
    fn big_texts_are_never_counted_in_place() {
        let big = "word ".repeat(INLINE_BYTES);
        assert_eq!(count_text_now(&big), estimate(big.len()));
    }
}
