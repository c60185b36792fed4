//! The deployment guides' snippets, as the tests use them: each is the
//! fenced block after a `<!-- snippet: NAME -->` line, with the guide's
//! placeholder address replaced by a test instance's.

/// The address the guides use for the mirror.
pub const PLACEHOLDER: &str = "mirror.internal:5000";

/// The snippet `name` from `file` (relative to the crate root), with the
/// placeholder replaced by `mirror`.
pub fn snippet(file: &str, name: &str, mirror: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let marker = format!("<!-- snippet: {name} -->");
    let after = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{file} has no snippet {name}"))
        .1;
    let block = after
        .trim_start()
        .strip_prefix("```")
        .expect("a fenced block follows the marker");
    let body = block.split_once('\n').expect("fence line").1;
    let body = body.split_once("\n```").expect("closing fence").0;
    format!("{body}\n").replace(PLACEHOLDER, mirror)
}

/// The text between `<<'END'` and `END` in a shell snippet.
pub fn heredoc(script: &str, end: &str) -> String {
    let start = format!("<<'{end}'\n");
    let body = script.split_once(&start).expect("heredoc start").1;
    body.split_once(&format!("\n{end}\n"))
        .expect("heredoc end")
        .0
        .to_owned()
}
