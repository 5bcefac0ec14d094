//! HTML and Markdown rendering of a [`Report`]. No templates and no scripts: the page must
//! read the same in any browser, offline, and in print.

use std::fmt::Write as _;
use std::path::Path;

use super::{inline_svg, Report, RunReport, Section, Table};
use crate::Result;

const CSS: &str = "
:root { --ink: #1b1f24; --muted: #57606a; --rule: #d0d7de; --accent: #0072b2; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; color: var(--ink);
  margin: 0 auto; max-width: 1200px; padding: 24px 32px 64px; line-height: 1.5; }
h1 { font-size: 1.9rem; margin: 0 0 4px; }
h2 { font-size: 1.4rem; border-bottom: 1px solid var(--rule); padding-bottom: 4px; margin-top: 40px; }
h3 { font-size: 1.15rem; margin-top: 28px; }
p.lead { color: var(--muted); margin-top: 0; }
ul.findings li { margin: 4px 0; }
nav { font-size: 0.95rem; }
nav a { color: var(--accent); margin-right: 14px; }
table { border-collapse: collapse; margin: 8px 0 18px; font-size: 0.9rem; }
th, td { border: 1px solid var(--rule); padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; color: var(--muted); padding: 4px 0; }
figure { margin: 12px 0 24px; }
figure svg { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: var(--muted); font-size: 0.85rem; }
.verdict-pass { color: #1a7f37; font-weight: 600; }
.verdict-warn { color: #9a6700; font-weight: 600; }
.verdict-fail, .verdict-error { color: #cf222e; font-weight: 600; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 0.85rem; }
dl.prov { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 0.85rem; }
code { font-size: 0.9em; background: #f6f8fa; padding: 0 3px; border-radius: 3px; }
dl.prov dt { color: var(--muted); } dl.prov dd { margin: 0; word-break: break-all; }
@media print { body { max-width: none; padding: 0; } figure, table { break-inside: avoid; }
  nav { display: none; } }
";

/// Escapes text for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Escaped text in which `code` spans (backtick pairs, as findings name sites and labels)
/// become `<code>` elements.
pub fn rich(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<code>{}</code>", escape(part)));
        } else {
            out.push_str(&escape(part));
        }
    }
    out
}

fn anchor(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn is_number(cell: &str) -> bool {
    let c = cell.trim_start_matches(['[', '-', '+']);
    c.chars().next().is_some_and(|ch| ch.is_ascii_digit())
}

pub fn render(report: &Report) -> Result<String> {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head><body>\n",
        escape(&report.title)
    );
    let _ = writeln!(h, "<h1>{}</h1>", escape(&report.title));
    if !report.description.is_empty() {
        let _ = writeln!(h, "<p class=\"lead\">{}</p>", escape(&report.description));
    }
    nav(&mut h, report);
    let _ = writeln!(
        h,
        "<h2 id=\"summary\">Summary of findings</h2>\n<ul class=\"findings\">"
    );
    let findings = report.findings();
    if findings.is_empty() {
        h.push_str("<li>No analysis in this report produced a finding.</li>\n");
    }
    for (run, f) in &findings {
        let prefix = if report.runs.len() > 1 {
            format!("<b>{}</b>: ", escape(run))
        } else {
            String::new()
        };
        let _ = writeln!(h, "<li>{prefix}{}</li>", rich(f));
    }
    h.push_str("</ul>\n");
    verdicts(&mut h, report);
    for run in &report.runs {
        run_html(&mut h, run, report.runs.len() > 1)?;
    }
    provenance_html(&mut h, report);
    h.push_str("</body></html>\n");
    Ok(h)
}

fn nav(h: &mut String, report: &Report) {
    h.push_str("<nav><a href=\"#summary\">Summary</a><a href=\"#audit\">Audit</a>");
    for run in &report.runs {
        for s in &run.sections {
            let id = anchor(&format!("{}-{}", run.name, s.title));
            let label = if report.runs.len() > 1 {
                format!("{}: {}", run.name, s.title)
            } else {
                s.title.clone()
            };
            let _ = write!(h, "<a href=\"#{id}\">{}</a>", escape(&label));
        }
    }
    h.push_str("<a href=\"#provenance\">Provenance</a></nav>\n");
}

fn verdicts(h: &mut String, report: &Report) {
    h.push_str("<h2 id=\"audit\">Audit verdicts</h2>\n");
    let all: Vec<_> = report
        .runs
        .iter()
        .flat_map(|r| r.verdicts.iter().map(move |v| (r, v)))
        .collect();
    if all.is_empty() {
        h.push_str("<p>No audit rules were evaluated for this report.</p>\n");
        return;
    }
    h.push_str("<table><tr><th>run</th><th>rule</th><th>verdict</th><th>evidence</th></tr>\n");
    for (run, v) in all {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"verdict-{}\">{}</td><td>{}</td></tr>",
            escape(&run.name),
            escape(&v.rule),
            escape(&v.verdict),
            escape(&v.verdict),
            escape(&v.detail)
        );
    }
    h.push_str("</table>\n");
}

fn run_html(h: &mut String, run: &RunReport, several: bool) -> Result<()> {
    if several {
        let _ = writeln!(
            h,
            "<h2 id=\"{}\">Run `{}`</h2>",
            anchor(&run.name),
            escape(&run.name)
        );
    }
    for s in &run.sections {
        section_html(h, run, s, several)?;
    }
    Ok(())
}

fn section_html(h: &mut String, run: &RunReport, s: &Section, several: bool) -> Result<()> {
    let tag = if several { "h3" } else { "h2" };
    let id = anchor(&format!("{}-{}", run.name, s.title));
    let _ = writeln!(h, "<{tag} id=\"{id}\">{}</{tag}>", escape(&s.title));
    if !s.note.is_empty() {
        let _ = writeln!(h, "<p>{}</p>", rich(&s.note));
    }
    if !s.findings.is_empty() {
        h.push_str("<ul class=\"findings\">");
        for f in &s.findings {
            let _ = write!(h, "<li>{}</li>", rich(f));
        }
        h.push_str("</ul>\n");
    }
    for plot in &s.plots {
        let svg = inline_svg(&run.root, plot)?;
        let _ = writeln!(
            h,
            "<figure>{svg}<figcaption>plots/{}.svg</figcaption></figure>",
            escape(plot)
        );
    }
    for t in &s.tables {
        table_html(h, t);
    }
    Ok(())
}

fn table_html(h: &mut String, t: &Table) {
    h.push_str("<table>");
    if !t.caption.is_empty() {
        let _ = write!(h, "<caption>{}</caption>", escape(&t.caption));
    }
    h.push_str("<tr>");
    for c in &t.header {
        let _ = write!(h, "<th>{}</th>", escape(c));
    }
    h.push_str("</tr>\n");
    for row in &t.rows {
        h.push_str("<tr>");
        for c in row {
            let class = if is_number(c) { " class=\"num\"" } else { "" };
            let _ = write!(h, "<td{class}>{}</td>", escape(c));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</table>\n");
}

fn provenance_html(h: &mut String, report: &Report) {
    h.push_str("<h2 id=\"provenance\">Provenance</h2>\n");
    for run in &report.runs {
        let _ = write!(
            h,
            "<h3>Run `{}` ({})</h3>\n<dl class=\"prov\">",
            escape(&run.name),
            escape(&run.root.display().to_string())
        );
        for (k, v) in &run.provenance {
            let _ = write!(h, "<dt>{}</dt><dd>{}</dd>", escape(k), escape(v));
        }
        h.push_str("</dl>\n");
    }
    if let Some(spec) = &report.spec {
        let _ = writeln!(h, "<h3>Experiment spec</h3>\n<pre>{}</pre>", escape(spec));
    }
}

/// Markdown for GitHub: the same sections, figures by path relative to `dir`.
pub fn render_markdown(report: &Report, dir: &Path) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# {}\n", report.title);
    if !report.description.is_empty() {
        let _ = writeln!(m, "{}\n", report.description);
    }
    m.push_str("## Summary of findings\n\n");
    for (run, f) in report.findings() {
        if report.runs.len() > 1 {
            let _ = writeln!(m, "- **{run}**: {f}");
        } else {
            let _ = writeln!(m, "- {f}");
        }
    }
    m.push_str("\n## Audit verdicts\n\n");
    let verdicts: Vec<_> = report
        .runs
        .iter()
        .flat_map(|r| r.verdicts.iter().map(move |v| (r, v)))
        .collect();
    if verdicts.is_empty() {
        m.push_str("No audit rules were evaluated for this report.\n");
    } else {
        m.push_str("| run | rule | verdict | evidence |\n| --- | --- | --- | --- |\n");
        for (r, v) in verdicts {
            let _ = writeln!(
                m,
                "| {} | {} | **{}** | {} |",
                r.name,
                md_cell(&v.rule),
                v.verdict,
                md_cell(&v.detail)
            );
        }
    }
    for run in &report.runs {
        let rel = run
            .root
            .strip_prefix(dir)
            .unwrap_or(&run.root)
            .to_path_buf();
        if report.runs.len() > 1 {
            let _ = writeln!(m, "\n## Run `{}`", run.name);
        }
        for s in &run.sections {
            let hashes = if report.runs.len() > 1 { "###" } else { "##" };
            let _ = writeln!(m, "\n{hashes} {}\n", s.title);
            if !s.note.is_empty() {
                let _ = writeln!(m, "{}\n", s.note);
            }
            for f in &s.findings {
                let _ = writeln!(m, "- {f}");
            }
            for p in &s.plots {
                let path = rel.join("plots").join(format!("{p}.svg"));
                let _ = writeln!(m, "\n![{p}]({})", path.display());
            }
            for t in &s.tables {
                m.push('\n');
                if !t.caption.is_empty() {
                    let _ = writeln!(m, "*{}*\n", t.caption);
                }
                let _ = writeln!(
                    m,
                    "| {} |",
                    t.header
                        .iter()
                        .map(|c| md_cell(c))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
                let _ = writeln!(m, "|{}", " --- |".repeat(t.header.len()));
                for row in &t.rows {
                    let _ = writeln!(
                        m,
                        "| {} |",
                        row.iter()
                            .map(|c| md_cell(c))
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                }
            }
        }
    }
    m.push_str("\n## Provenance\n");
    for run in &report.runs {
        let _ = writeln!(m, "\n**{}** (`{}`)\n", run.name, run.root.display());
        for (k, v) in &run.provenance {
            let _ = writeln!(m, "- {k}: `{}`", v.replace('`', "'"));
        }
    }
    if let Some(spec) = &report.spec {
        let _ = writeln!(
            m,
            "\n### Experiment spec\n\n```toml\n{}\n```",
            spec.trim_end()
        );
    }
    m
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_numbers_align_right() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!(is_number("0.93") && is_number("[0.90, 0.95]") && is_number("-1"));
        assert!(!is_number("latent"));
        assert_eq!(anchor("run: Probe x"), "run--probe-x");
        assert_eq!(rich("at `a<b>` now"), "at <code>a&lt;b&gt;</code> now");
    }
}
