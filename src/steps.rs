//! `--steps`: which denoising steps (or thoughts) to keep.
//!
//! Grammar: `all`, `last`, a list `0,10,49`, a range `0..50` (end exclusive), a strided
//! range `0..50:5`, or any comma-separated mix. Steps are indices into the full schedule
//! (0 = first, noisiest step).

use crate::{Error, Result};

/// Parses `spec` against a generation that runs steps `first..total`. `None` means every
/// step. The result is sorted and free of duplicates.
pub fn parse_steps(spec: &str, first: u16, total: u16) -> Result<Option<Vec<u16>>> {
    let err = |reason: String| Error::Steps {
        spec: spec.to_string(),
        reason,
    };
    let spec_trim = spec.trim();
    if spec_trim == "all" {
        return Ok(None);
    }
    if total == 0 || first >= total {
        return Err(err("this generation runs no denoising steps".into()));
    }
    let last = total - 1;
    let mut steps = Vec::new();
    for item in spec_trim.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(err("empty item; write e.g. `0,10,49` or `0..50:5`".into()));
        }
        if item == "last" {
            steps.push(last);
            continue;
        }
        if let Some((start, rest)) = item.split_once("..") {
            let (end, stride) = match rest.split_once(':') {
                Some((end, stride)) => (end, stride),
                None => (rest, "1"),
            };
            let start = number(start, first, last, &err)?;
            let end = number(end, first, last + 1, &err)?;
            let stride = number(stride, 1, last + 1, &err)?;
            if stride == 0 {
                return Err(err("a stride of 0 never advances".into()));
            }
            if start >= end {
                return Err(err(format!("range {start}..{end} is empty")));
            }
            steps.extend((start..end).step_by(stride as usize));
        } else {
            steps.push(number(item, first, last, &err)?);
        }
    }
    if let Some(&bad) = steps.iter().find(|&&s| s > last || s < first) {
        return Err(err(format!(
            "step {bad} does not run: this generation runs steps {first}..={last}"
        )));
    }
    steps.sort_unstable();
    steps.dedup();
    Ok(Some(steps))
}

/// A whole number; the error gives the range (`lo..=hi`) that would be accepted here.
fn number(text: &str, lo: u16, hi: u16, err: &dyn Fn(String) -> Error) -> Result<u16> {
    text.trim().parse::<u16>().map_err(|_| {
        err(format!(
            "`{}` is not a step number: expected a whole number in {lo}..={hi}",
            text.trim()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lists_ranges_and_strides() {
        assert_eq!(parse_steps("all", 0, 50).unwrap(), None);
        assert_eq!(
            parse_steps("0,10,49", 0, 50).unwrap(),
            Some(vec![0, 10, 49])
        );
        assert_eq!(
            parse_steps("0..50:10", 0, 50).unwrap(),
            Some(vec![0, 10, 20, 30, 40])
        );
        assert_eq!(
            parse_steps("3..5, last, 3", 0, 50).unwrap(),
            Some(vec![3, 4, 49])
        );
    }

    #[test]
    fn impossible_steps_are_refused_with_the_valid_range() {
        let e = parse_steps("60", 0, 50).unwrap_err().to_string();
        assert!(e.contains("0..=49"), "{e}");
        let e = parse_steps("5", 20, 50).unwrap_err().to_string();
        assert!(e.contains("20..=49"), "{e}");
        assert!(parse_steps("5..5", 0, 50).is_err());
        assert!(parse_steps("0..10:0", 0, 50).is_err());
        assert!(parse_steps("ten", 0, 50).is_err());
        assert!(parse_steps("1,,2", 0, 50).is_err());
        // Beyond u16: the allowed range is said, not only that it is no number.
        let e = parse_steps("65536", 0, 50).unwrap_err().to_string();
        assert!(e.contains("0..=49"), "{e}");
        let e = parse_steps("0..70000", 0, 50).unwrap_err().to_string();
        assert!(e.contains("0..=50"), "{e}");
    }
}
