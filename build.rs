//! Writes the token-counting tables (`$OUT_DIR/o200k_count.bin.deflate`)
//! that `src/canonical/tokens.rs` embeds.
//!
//! `bpe-openai` ships o200k as one serialized `BytePairEncoding` of 32 MB
//! that costs about 35 MiB of heap once loaded, plus 34 MiB of the binary
//! paged in to read it. Counting uses only part of it: the longest-match
//! automaton, the token lengths, the merge tables and the prefix links. The
//! rest (two overlapping-match automata, the token bytes and the hash map
//! from bytes to token, used by incremental encoders and decoding) is
//! replaced here by empty values, and what remains is deflated. Loaded, the
//! counting tables are about 14 MiB; the embedded bytes about a quarter of
//! that. `canonical::tokens` checks its counts against the full tokenizer in
//! its tests.
use std::io::Write;

use rmpv::Value;

/// Positions of the fields of bpe's `BytePairEncoding` (serialized as an
/// array, in declaration order) that counting does not read.
const ALL_TOKENS: usize = 0;
const BYTES_HASH_TO_TOKEN: usize = 2;
const OVERLAPPING_SEARCHER: usize = 6;
const OVERLAPPING_SEARCHER_REV: usize = 7;
const FIELDS: usize = 10;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo::rerun-if-changed=build.rs");
    let full = rmp_serde::to_vec(&bpe_openai::o200k_base().bpe)?;
    let mut value = rmpv::decode::read_value(&mut &full[..])?;
    // A change of bpe's layout fails the build here, not the counts later.
    let fields = match &mut value {
        Value::Array(fields)
            if fields.len() == FIELDS
                && matches!(fields[OVERLAPPING_SEARCHER], Value::Binary(_))
                && matches!(fields[OVERLAPPING_SEARCHER_REV], Value::Binary(_)) =>
        {
            fields
        }
        _ => return Err("bpe's BytePairEncoding changed its serialized fields".into()),
    };
    // A valid automaton of one pattern stands in for the unused ones.
    let tiny = daachorse::DoubleArrayAhoCorasick::<u32>::new(["\0"])
        .map_err(|e| e.to_string())?
        .serialize();
    fields[ALL_TOKENS] = Value::Array(Vec::new());
    fields[BYTES_HASH_TO_TOKEN] = Value::Map(Vec::new());
    fields[OVERLAPPING_SEARCHER] = Value::Binary(tiny.clone());
    fields[OVERLAPPING_SEARCHER_REV] = Value::Binary(tiny);
    let mut compact = Vec::new();
    rmpv::encode::write_value(&mut compact, &value)?;

    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let file = std::fs::File::create(out.join("o200k_count.bin.deflate"))?;
    let mut enc = flate2::write::DeflateEncoder::new(file, flate2::Compression::best());
    enc.write_all(&compact)?;
    enc.finish()?;
    Ok(())
}
