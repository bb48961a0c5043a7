//! The guide shows the Laravel example's real code: every fenced block in
//! docs/replacing-wire-poll.md whose first line names a file under `examples/` must appear in
//! that file, line for line. So the guide cannot drift from what the browser tests run.

use std::path::Path;

/// `// examples/…` or `{{-- examples/… --}}`: the file a block is cut from.
fn source_of(first_line: &str) -> Option<&str> {
    let line = first_line.trim();
    let path = line
        .strip_prefix("// ")
        .or_else(|| {
            line.strip_prefix("{{-- ")
                .and_then(|l| l.strip_suffix(" --}}"))
        })?
        .trim();
    path.starts_with("examples/").then_some(path)
}

#[test]
fn guide_snippets_are_cut_from_the_laravel_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide = std::fs::read_to_string(root.join("docs/replacing-wire-poll.md")).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in guide.lines() {
        match (&mut current, line.starts_with("```")) {
            (None, true) => current = Some(Vec::new()),
            (Some(_), true) => blocks.push(current.take().unwrap()),
            (Some(lines), false) => lines.push(line),
            (None, false) => {}
        }
    }
    let mut checked = 0;
    for block in &blocks {
        let Some(path) = block.first().and_then(|l| source_of(l)) else {
            continue;
        };
        let file = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("the guide quotes {path}, which cannot be read: {e}"));
        let file: Vec<&str> = file.lines().collect();
        let snippet = &block[1..];
        assert!(!snippet.is_empty(), "empty snippet of {path}");
        assert!(
            file.windows(snippet.len()).any(|w| w == snippet),
            "docs/replacing-wire-poll.md quotes {path}, but the file no longer contains:\n{}",
            snippet.join("\n")
        );
        checked += 1;
    }
    assert!(
        checked >= 6,
        "expected the guide to quote the example ({checked} blocks)"
    );
}
