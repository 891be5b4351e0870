//! TAP (version 13) lines: a test point and its YAML diagnostic block.

/// The description of a test point: its name, with what TAP would read
/// as a directive (`#`) or an escape (`\`) escaped.
pub(crate) fn description(name: &str) -> String {
    name.replace('\\', "\\\\").replace('#', "\\#")
}

/// `ok N - NAME`, with ` # SKIP reason` when `skip` is `Some`.
pub(crate) fn ok(n: usize, name: &str, skip: Option<&str>) -> String {
    let mut line = format!("ok {n} - {}", description(name));
    if let Some(why) = skip {
        line.push_str(" # SKIP");
        let why = one_line(why);
        if !why.is_empty() {
            line.push(' ');
            line.push_str(&why);
        }
    }
    line
}

/// `not ok N - NAME` and its diagnostic block: `fields` in order, each
/// `key: value`, the multi-line ones as literal blocks.
pub(crate) fn not_ok(n: usize, name: &str, fields: &[(&str, String)]) -> String {
    let mut s = format!("not ok {n} - {}\n  ---\n", description(name));
    for (key, value) in fields {
        s.push_str(&field(key, value));
    }
    s.push_str("  ...");
    s
}

/// `text` on one line: line breaks and control characters as spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

/// `text` with what YAML does not allow in a stream (control characters
/// other than tab and line feed) shown as `\xNN`.
fn printable(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\t' && c != '\n' {
            s.push_str(&format!("\\x{:02x}", u32::from(c)));
        } else {
            s.push(c);
        }
    }
    s
}

/// One `key: value` line of the block (indented two spaces): a plain
/// scalar when the value is one simple line, a literal block (`|`) when it
/// has several lines (that a block can hold), else a double-quoted
/// string.  Kept to what TAP
/// harnesses' small YAML readers take too (Perl's `prove`: no indentation
/// indicator, no blank line in a block).
fn field(key: &str, value: &str) -> String {
    let value = printable(value);
    let value = value.trim_start_matches('\n').trim_end();
    let plain = !value.contains('\n')
        && value.chars().next().is_some_and(|c| c.is_alphanumeric())
        && !value.contains(": ")
        && !value.contains(" #")
        && !value.ends_with(':');
    if value.is_empty() {
        return format!("  {key}: ''\n");
    }
    if plain {
        return format!("  {key}: {value}\n");
    }
    // A block's indentation is its first line's; a line of dots or dashes
    // would end the TAP diagnostic.
    let block = value.contains('\n')
        && !value.starts_with(char::is_whitespace)
        && value.lines().all(|l| !matches!(l.trim(), "..." | "---"));
    if !block {
        return format!("  {key}: {}\n", double_quoted(value));
    }
    let mut s = format!("  {key}: |\n");
    for line in value.lines() {
        s.push_str("    ");
        s.push_str(line);
        s.push('\n');
    }
    s
}

/// `text` as a YAML double-quoted string, on one line.
fn double_quoted(text: &str) -> String {
    let mut s = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            _ => s.push(c),
        }
    }
    s.push('"');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::prelude::v1::test;

    #[test]
    fn ok_lines_escape_the_name_and_give_the_skip_reason() {
        assert_eq!(ok(1, "api::api_1_x", None), "ok 1 - api::api_1_x");
        assert_eq!(ok(2, "a::#b\\", None), "ok 2 - a::\\#b\\\\");
        assert_eq!(ok(3, "a::b", Some("")), "ok 3 - a::b # SKIP");
        assert_eq!(
            ok(4, "a::b", Some("slow\nreally")),
            "ok 4 - a::b # SKIP slow really"
        );
    }

    #[test]
    fn not_ok_has_a_yaml_block_with_plain_and_literal_values() {
        let s = not_ok(
            7,
            "sock::sock_1_x",
            &[
                (
                    "message",
                    "assertion `left == right` failed\n  left: 1\n right: 2".into(),
                ),
                ("at", "conformance/tests/sock.rs:12:5".into()),
                ("status", "exit 1".into()),
                ("output", "\nfirst\n\nbell \u{7}\n".into()),
                ("indented", "  a\n\t\"b\"\\".into()),
                ("dots", "x\n...\n".into()),
                ("empty", String::new()),
            ],
        );
        assert_eq!(
            s,
            "not ok 7 - sock::sock_1_x\n  ---\n  message: |\n    assertion `left == right` failed\n      left: 1\n     right: 2\n  at: conformance/tests/sock.rs:12:5\n  status: exit 1\n  output: |\n    first\n    \n    bell \\x07\n  indented: \"  a\\n\\t\\\"b\\\"\\\\\"\n  dots: \"x\\n...\"\n  empty: ''\n  ..."
        );
    }

    #[test]
    fn values_a_plain_scalar_would_misread_are_quoted_or_blocks() {
        for v in ["a: b", "x #y", "'q'", "-1 x", "ends:"] {
            assert_eq!(
                field("k", v),
                format!("  k: {}\n", double_quoted(v)),
                "{v:?}"
            );
        }
        assert_eq!(field("k", "exit 101"), "  k: exit 101\n");
        assert_eq!(field("k", "trailing \n"), "  k: trailing\n");
    }
}
