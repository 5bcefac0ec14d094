//! Finds the line of a key in a spec's text, so a problem found after parsing (an unknown
//! site, a missing label) still points at a line. A path is `["run", "1", "probe", "0",
//! "labels"]`: the second `[[run]]`, its first `[[run.probe]]`, key `labels`. The search
//! follows TOML's table headers line by line; it is a pointer for people, so when a
//! spec's layout defeats it (inline tables, dotted keys) the message just has no line.

/// `message`, prefixed with `line N: ` when the path's line is found.
pub fn problem(text: &str, path: &[&str], message: &str) -> String {
    match line_of(text, path) {
        Some(n) => format!("line {n}: {message}"),
        None => message.to_string(),
    }
}

/// The 1-based line of `path` (or of its closest table found).
pub fn line_of(text: &str, path: &[&str]) -> Option<usize> {
    let run_index: usize = path.get(1)?.parse().ok()?;
    let section = path.get(2).copied();
    let section_index: Option<usize> = path.get(3).and_then(|s| s.parse().ok());
    let key = match (section, section_index) {
        (Some(_), Some(_)) => path.get(4).copied(),
        (Some(k), None) => Some(k),
        _ => None,
    };
    let (mut runs, mut sections) = (0usize, 0usize);
    let mut in_run = false;
    let mut in_section = section.is_none();
    let mut best = None;
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('[') {
            let header = line.trim_matches(|c| c == '[' || c == ']').trim();
            if line.starts_with("[[") && header == "run" {
                in_run = runs == run_index;
                runs += 1;
                sections = 0;
                in_section = section.is_none() || section_index.is_none();
                if in_run {
                    best = Some(n + 1);
                }
                continue;
            }
            if !in_run {
                continue;
            }
            let name = header.strip_prefix("run.").unwrap_or(header);
            match (section, section_index) {
                (Some(s), Some(i)) if name == s => {
                    in_section = sections == i;
                    sections += 1;
                    if in_section {
                        best = Some(n + 1);
                    }
                }
                (Some(s), None) if name == s => {
                    in_section = true;
                    best = Some(n + 1);
                }
                _ => in_section = false,
            }
            continue;
        }
        if in_run && in_section {
            if let Some(k) = key {
                let found = line
                    .split_once('=')
                    .is_some_and(|(lhs, _)| lhs.trim().trim_matches('"') == k);
                if found {
                    return Some(n + 1);
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"title = "t"

[[run]]
name = "a"
[run.diffusion]
samples = 8
[[run.probe]]
labels = ["shape"]
[[run.probe]]
labels = ["colour"]

[[run]]
name = "b"
[run.reasoner]
thoughts = 2
"#;

    #[test]
    fn finds_keys_in_the_right_run_and_table() {
        assert_eq!(
            line_of(SPEC, &["run", "0", "probe", "1", "labels"]),
            Some(10)
        );
        assert_eq!(
            line_of(SPEC, &["run", "0", "probe", "0", "labels"]),
            Some(8)
        );
        assert_eq!(line_of(SPEC, &["run", "1", "reasoner"]), Some(14));
        assert_eq!(line_of(SPEC, &["run", "1", "name"]), Some(13));
        assert_eq!(line_of(SPEC, &["run", "0", "diffusion"]), Some(5));
        assert_eq!(problem(SPEC, &["run", "7"], "x"), "x");
    }
}
