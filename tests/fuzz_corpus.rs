//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and the crash
//! reproducers (`fuzz/artifacts/<target>/`) through the same functions the
//! fuzz targets call (`troupe::fuzzing`): no fuzzing, a few seconds, so a
//! decoder that regresses on an input fuzzing once found fails `cargo test`.
//! A reproducer of a bug not yet fixed fails its target's test until it is.
//!
//! Fuzzing itself: `scripts/fuzz.sh` (see `fuzz/README.md`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use troupe::fuzzing;

/// Runs every input of `target` through `run`; fails naming each input that
/// panicked or broke a property.
fn replay(target: &str, run: fn(&[u8]) -> Result<(), String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = 0;
    let mut failures = Vec::new();
    for dir in ["corpus", "artifacts"] {
        let dir = root.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        paths.sort();
        for path in paths {
            inputs += 1;
            let data = match std::fs::read(&path) {
                Ok(data) => data,
                Err(e) => {
                    failures.push(format!("{}: cannot read: {e}", path.display()));
                    continue;
                }
            };
            match catch_unwind(AssertUnwindSafe(|| run(&data))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failures.push(format!("{}: {e}", path.display())),
                Err(_) => failures.push(format!("{}: panicked (message above)", path.display())),
            }
        }
    }
    assert!(inputs > 0, "no corpus for fuzz target {target}");
    assert!(
        failures.is_empty(),
        "{} of {inputs} inputs of fuzz target {target} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

macro_rules! replays {
    ($($target:ident: $run:expr,)*) => {$(
        #[test]
        fn $target() {
            replay(stringify!($target), $run);
        }
    )*};
}

replays! {
    openai_request: |d| {
        fuzzing::openai_request(d);
        Ok(())
    },
    anthropic_request: |d| {
        fuzzing::anthropic_request(d);
        Ok(())
    },
    responses_stream: |d| {
        fuzzing::responses_stream(d);
        Ok(())
    },
    responses_request: |d| {
        fuzzing::responses_request(d);
        Ok(())
    },
    request_body: fuzzing::request_body,
    sse: fuzzing::sse,
    openai_stream: fuzzing::openai_stream,
    anthropic_stream: |d| {
        fuzzing::anthropic_stream(d);
        Ok(())
    },
    ondemand_stream: |d| {
        fuzzing::ondemand_stream(d);
        Ok(())
    },
    langgraph_stream: |d| {
        fuzzing::langgraph_stream(d);
        Ok(())
    },
    cli_claude: |d| {
        fuzzing::cli_claude(d);
        Ok(())
    },
    cli_codex: |d| {
        fuzzing::cli_codex(d);
        Ok(())
    },
    cli_gemini: |d| {
        fuzzing::cli_gemini(d);
        Ok(())
    },
    socketio_packets: |d| {
        fuzzing::socketio_packets(d);
        Ok(())
    },
    lingma_rpc: |d| {
        fuzzing::lingma_rpc(d);
        Ok(())
    },
    config_toml: |d| {
        fuzzing::config_toml(d);
        Ok(())
    },
}
