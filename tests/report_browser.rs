//! The quickstart experiment as a reader meets it: its report opened in a real browser
//! (headless Chromium, driven over the DevTools protocol), and the notebooks in
//! `notebooks/` executed against its runs. Both need the same quickstart folder, so this
//! one test binary makes it once (`latentlens run probes/quickstart.toml --out DIR`) for
//! all its tests.
//!
//! Chromium and the notebooks' Python are not Rust dependencies: `.ci/run` installs them.
//! Without them the tests print a warning and return; with them, a broken page or a
//! failing notebook fails the test.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Where this binary keeps what it makes (the quickstart run, screenshots, browser
/// profiles): under target/, replaced at each test run, left for a look afterwards.
fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report_browser")
}

/// A warning that shows even though the test harness captures test output.
fn warn(msg: &str) {
    let _ = writeln!(std::io::stderr(), "\nWARNING: {msg}\n");
}

/// The quickstart experiment folder, made once per test binary.
fn quickstart() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = work_dir().join("quickstart");
        if out.exists() {
            std::fs::remove_dir_all(&out).expect("the previous quickstart folder is removable");
        }
        let spec = Path::new(ROOT).join("probes/quickstart.toml");
        let res = Command::new(env!("CARGO_BIN_EXE_latentlens"))
            .arg("run")
            .arg(&spec)
            .arg("--out")
            .arg(&out)
            // The spec's relative paths are read from the repository root.
            .current_dir(ROOT)
            .output()
            .expect("the binary runs");
        assert!(
            res.status.success(),
            "latentlens run probes/quickstart.toml failed:\n{}\n{}",
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
        out
    })
}

// ---------------------------------------------------------------------------------------
// The report in Chromium
// ---------------------------------------------------------------------------------------

/// Debian's Chromium, or the one `LATENTLENS_CHROMIUM` names.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("LATENTLENS_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    path.is_file().then_some(path)
}

/// Headless Chromium with one DevTools session on one tab, over `--remote-debugging-pipe`
/// (commands in on fd 3, answers and events out on fd 4, each a JSON text ended by NUL).
/// A shell maps the child's stdin/stdout onto fds 3/4, so std alone can drive it.
struct Browser {
    child: Child,
    to: ChildStdin,
    from: Receiver<Value>,
    next_id: u64,
    session: Option<String>,
    /// Every event seen so far, in order.
    events: Vec<Value>,
}

/// How long one DevTools command may take before the test gives up on the browser.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

impl Browser {
    fn launch(chromium: &Path, dir: &Path) -> Browser {
        let profile = dir.join("profile");
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(dir.join("chromium.log")).unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>&2"#)
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                "--window-size=1280,2000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("chromium starts");
        let to = child.stdin.take().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, from) = mpsc::channel();
        std::thread::spawn(move || loop {
            let mut buf = Vec::new();
            match reader.read_until(0, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    buf.pop_if(|b| *b == 0);
                    let Ok(v) = serde_json::from_slice::<Value>(&buf) else {
                        continue;
                    };
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Browser {
            child,
            to,
            from,
            next_id: 0,
            session: None,
            events: Vec::new(),
        }
    }

    fn next_message(&mut self, waiting_for: &str) -> Value {
        match self.from.recv_timeout(COMMAND_TIMEOUT) {
            Ok(v) => v,
            Err(e) => panic!("chromium did not answer ({waiting_for}): {e}"),
        }
    }

    /// Sends a command (on the tab's session once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).expect("chromium reads commands");
        self.to.flush().unwrap();
        loop {
            let v = self.next_message(method);
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    panic!("DevTools {method} failed: {err}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Waits for an event of the tab, keeping every event seen meanwhile.
    fn wait_for(&mut self, method: &str) {
        if self.events.iter().any(|e| e["method"] == method) {
            return;
        }
        loop {
            let v = self.next_message(method);
            let hit = v["method"] == method;
            if v.get("method").is_some() {
                self.events.push(v);
            }
            if hit {
                return;
            }
        }
    }

    /// A new tab with the domains that report errors and requests switched on.
    fn open_tab(&mut self) {
        let target = self.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target["targetId"], "flatten": true }),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
        for domain in ["Page", "Runtime", "Log", "Network"] {
            self.call(&format!("{domain}.enable"), json!({}));
        }
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 2000, "deviceScaleFactor": 1, "mobile": false }),
        );
    }

    fn evaluate(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true }),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating the page check failed: {e}");
        }
        r["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the browser saw of one page.
#[derive(Debug)]
struct PageCheck {
    /// Console errors, uncaught exceptions and browser log errors (failed loads among them).
    errors: Vec<String>,
    /// Every request but the page itself (data: URLs are not requests on the network).
    requests: Vec<String>,
    /// One entry per `<figure>`: its caption and the sizes of its SVG.
    figures: Vec<Figure>,
    /// The page's scroll width at a 1280 px viewport.
    scroll_width: f64,
}

#[derive(Debug, serde::Deserialize)]
struct Figure {
    caption: String,
    svg: bool,
    width: f64,
    height: f64,
    drawn_width: f64,
    drawn_height: f64,
    elements: u64,
}

impl Figure {
    fn rendered(&self) -> bool {
        self.svg
            && self.width > 0.0
            && self.height > 0.0
            && self.drawn_width > 0.0
            && self.drawn_height > 0.0
            && self.elements > 0
    }
}

/// Every `<figure>` on the page, with its SVG's box on the page and the box of what the
/// SVG draws (`getBBox`: zero when nothing inside it rendered).
const FIGURES_JS: &str = r#"JSON.stringify([...document.querySelectorAll('figure')].map(f => {
  const s = f.querySelector('svg');
  const cap = (f.querySelector('figcaption') || {}).textContent || '';
  if (!s) return {caption: cap, svg: false, width: 0, height: 0, drawn_width: 0, drawn_height: 0, elements: 0};
  const r = s.getBoundingClientRect();
  let b = {width: 0, height: 0};
  try { b = s.getBBox(); } catch (e) {}
  return {caption: cap, svg: true, width: r.width, height: r.height,
          drawn_width: b.width, drawn_height: b.height, elements: s.querySelectorAll('*').length};
}))"#;

/// Opens `page` in a fresh headless Chromium, collects what went wrong, and saves a
/// 1280x2000 screenshot to `screenshot`.
fn check_page(chromium: &Path, page: &Path, dir: &Path, screenshot: &Path) -> PageCheck {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    std::fs::create_dir_all(dir).unwrap();
    let url = format!("file://{}", page.canonicalize().unwrap().display());
    let mut b = Browser::launch(chromium, dir);
    b.open_tab();
    b.call("Page.navigate", json!({ "url": url }));
    b.wait_for("Page.loadEventFired");
    let figures: Vec<Figure> =
        serde_json::from_str(b.evaluate(FIGURES_JS).as_str().expect("a JSON string"))
            .expect("the figure check's JSON");
    let scroll_width = b
        .evaluate("document.documentElement.scrollWidth")
        .as_f64()
        .unwrap_or(f64::NAN);
    let shot = b.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = base64_decode(shot["data"].as_str().expect("screenshot data"));
    std::fs::write(screenshot, &png).unwrap();

    let mut errors = Vec::new();
    let mut requests = Vec::new();
    for e in &b.events {
        let p = &e["params"];
        match e["method"].as_str().unwrap_or("") {
            "Runtime.consoleAPICalled"
                if matches!(p["type"].as_str(), Some("error" | "assert")) =>
            {
                errors.push(format!("console.{}: {}", p["type"], p["args"]))
            }
            "Runtime.exceptionThrown" => {
                errors.push(format!("exception: {}", p["exceptionDetails"]))
            }
            "Log.entryAdded" if p["entry"]["level"] == "error" => errors.push(format!(
                "log: {} {}",
                p["entry"]["text"],
                p["entry"]["url"].as_str().unwrap_or("")
            )),
            "Network.requestWillBeSent" => {
                let req = p["request"]["url"].as_str().unwrap_or("").to_string();
                if req != url && !req.starts_with("data:") {
                    requests.push(req);
                }
            }
            _ => {}
        }
    }
    PageCheck {
        errors,
        requests,
        figures,
        scroll_width,
    }
}

/// Standard base64 (the screenshot's encoding), without a dependency for it.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(val(*c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.len() > 1000 && b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// The plots report.md shows (as `![name](run/plots/name.svg)`): report.html must render
/// each of them.
fn plots_in_markdown(md: &str) -> Vec<String> {
    md.lines()
        .filter(|l| l.starts_with("![") && l.contains("/plots/") && l.trim_end().ends_with(".svg)"))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn quickstart_report_renders_in_chromium_without_errors_or_requests() {
    let Some(chromium) = chromium() else {
        warn(
            "skipping the browser check of the report: no Chromium at /usr/bin/chromium or \
             $LATENTLENS_CHROMIUM (install it with `apt-get install chromium`)",
        );
        return;
    };
    let out = quickstart();
    let dir = work_dir().join("browser-quickstart");
    let screenshot = work_dir().join("quickstart-report.png");
    let check = check_page(&chromium, &out.join("report.html"), &dir, &screenshot);

    assert!(
        check.errors.is_empty(),
        "the report logged errors: {:#?}",
        check.errors
    );
    assert!(
        check.requests.is_empty(),
        "the report made requests (it must be self-contained): {:#?}",
        check.requests
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let expected = plots_in_markdown(&md);
    assert!(!expected.is_empty(), "report.md shows no plots:\n{md}");
    assert_eq!(
        check.figures.len(),
        expected.len(),
        "report.html has {} figures, report.md shows {} plots: {expected:#?}",
        check.figures.len(),
        expected.len()
    );
    let blank: Vec<String> = check
        .figures
        .iter()
        .filter(|f| !f.rendered())
        .map(|f| format!("`{}`: {f:?}", f.caption))
        .collect();
    assert!(blank.is_empty(), "figures that did not render: {blank:#?}");
    assert!(
        check.scroll_width <= 1280.0,
        "the report is wider than a 1280 px window: {} px",
        check.scroll_width
    );
    assert!(
        is_png(&screenshot),
        "no screenshot at {}",
        screenshot.display()
    );
}

/// The check itself must be able to fail: a page with a console error, a request and an
/// empty figure is caught on all three counts.
#[test]
fn a_broken_page_fails_the_browser_check() {
    let Some(chromium) = chromium() else {
        warn("skipping the browser check's own test: no Chromium (see the report's test)");
        return;
    };
    let dir = work_dir().join("browser-broken");
    std::fs::create_dir_all(work_dir()).unwrap();
    let page = work_dir().join("broken.html");
    // Port 9 on loopback (discard): the request is refused at once and never leaves.
    std::fs::write(
        &page,
        r##"<!DOCTYPE html><html><head><meta charset="utf-8"><title>broken</title></head><body>
<script>console.error("deliberate");</script>
<img src="http://127.0.0.1:9/missing.png" alt="">
<figure><svg xmlns="http://www.w3.org/2000/svg" width="0" height="0"></svg><figcaption>empty</figcaption></figure>
<figure><svg xmlns="http://www.w3.org/2000/svg" width="200" height="100"><rect width="200" height="100" fill="#0072b2"/></svg><figcaption>drawn</figcaption></figure>
</body></html>"##,
    )
    .unwrap();
    let screenshot = work_dir().join("broken.png");
    let check = check_page(&chromium, &page, &dir, &screenshot);

    assert!(
        check.errors.iter().any(|e| e.contains("deliberate")),
        "the console error was missed: {check:#?}"
    );
    assert!(
        check.requests.iter().any(|r| r.contains("127.0.0.1:9")),
        "the request was missed: {check:#?}"
    );
    let rendered: Vec<bool> = check.figures.iter().map(Figure::rendered).collect();
    assert_eq!(rendered, [false, true], "{check:#?}");
    assert!(is_png(&screenshot));
}

#[test]
fn base64_decodes_padding() {
    assert_eq!(base64_decode("TWFu"), b"Man");
    assert_eq!(base64_decode("TWE="), b"Ma");
    assert_eq!(base64_decode("TQ=="), b"M");
}

#[test]
fn markdown_plots_are_the_svg_images_under_plots() {
    let md =
        "# t\n![a](run/plots/a.svg)\n\ntext ![inline](x.svg)\n![b](r/plots/b.svg)\n![c](c.png)\n";
    assert_eq!(plots_in_markdown(md).len(), 2);
}

// ---------------------------------------------------------------------------------------
// The notebooks
// ---------------------------------------------------------------------------------------

/// Every notebook and the quickstart run it is executed against. A notebook missing here
/// fails `every_notebook_is_executed_in_ci`, so none is left out of CI by accident.
const NOTEBOOKS: [(&str, &str); 3] = [
    ("explore_diffusion.ipynb", "diffusion"),
    ("reasoner_thoughts.ipynb", "reasoner"),
    ("reasoner_lookup_circuit.ipynb", "reasoner"),
];

fn notebook_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("notebooks"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".ipynb"))
        .collect();
    names.sort();
    names
}

#[test]
fn every_notebook_is_executed_in_ci() {
    let mut listed: Vec<String> = NOTEBOOKS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(
        notebook_files(),
        listed,
        "add the notebook to NOTEBOOKS with its run"
    );
}

/// Notebooks are committed without outputs: diffs stay readable and no stale numbers ship.
#[test]
fn notebooks_are_stored_without_outputs() {
    for name in notebook_files() {
        let path = Path::new(ROOT).join("notebooks").join(&name);
        let nb: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));
        assert_eq!(nb["nbformat"], 4, "{name}: not an nbformat 4 notebook");
        for cell in nb["cells"].as_array().expect("cells") {
            if cell["cell_type"] == "code" {
                assert_eq!(
                    cell["outputs"],
                    json!([]),
                    "{name}: a cell keeps its outputs"
                );
                assert!(
                    cell["execution_count"].is_null(),
                    "{name}: a cell keeps its count"
                );
            }
        }
    }
}

/// Executes every notebook headless (nbconvert) against the quickstart run, with the
/// Python that `LATENTLENS_NOTEBOOK_PYTHON` names (a venv with notebooks/requirements.txt,
/// made by `.ci/run`).
#[test]
fn notebooks_run_on_the_quickstart() {
    let Some(python) = std::env::var_os("LATENTLENS_NOTEBOOK_PYTHON") else {
        warn(
            "skipping the notebooks: LATENTLENS_NOTEBOOK_PYTHON is not set (point it at a \
             python with notebooks/requirements.txt installed; `.ci/run` makes one)",
        );
        return;
    };
    let python = PathBuf::from(python);
    assert!(
        python.is_file(),
        "LATENTLENS_NOTEBOOK_PYTHON={} is not a file",
        python.display()
    );
    let out = quickstart();
    let executed = work_dir().join("notebooks");
    std::fs::create_dir_all(&executed).unwrap();
    // In parallel: the machine's cores share the kernels' numpy work.
    std::thread::scope(|scope| {
        let runs: Vec<_> = NOTEBOOKS
            .iter()
            .map(|&(name, run)| {
                let (python, executed) = (&python, &executed);
                let run = out.join(run);
                scope.spawn(move || execute_notebook(python, name, &run, executed))
            })
            .collect();
        let failures: Vec<String> = runs
            .into_iter()
            .filter_map(|h| h.join().expect("the notebook thread").err())
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    });
}

/// Runs one notebook through nbconvert with `LATENTLENS_RUN=run`; the executed copy lands
/// in `executed`.
fn execute_notebook(python: &Path, name: &str, run: &Path, executed: &Path) -> Result<(), String> {
    let res = Command::new(python)
        .args(["-m", "nbconvert", "--to", "notebook", "--execute"])
        .arg("--ExecutePreprocessor.timeout=600")
        .arg("--output-dir")
        .arg(executed)
        .arg(Path::new("notebooks").join(name))
        .env("LATENTLENS_RUN", run)
        .env("MPLBACKEND", "Agg")
        .current_dir(ROOT)
        .output()
        .map_err(|e| format!("{}: {e}", python.display()))?;
    if !res.status.success() {
        return Err(format!(
            "notebook {name} failed on {}:\n{}",
            run.display(),
            String::from_utf8_lossy(&res.stderr)
        ));
    }
    if !executed.join(name).is_file() {
        return Err(format!(
            "{name}: no executed copy in {}",
            executed.display()
        ));
    }
    Ok(())
}

/// `run --out DIR` (what these tests use) moves the whole experiment into DIR, and
/// `--dry-run` with it writes nothing.
#[test]
fn run_out_overrides_the_spec_folder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("elsewhere");
    let res = Command::new(env!("CARGO_BIN_EXE_latentlens"))
        .args(["run", "probes/quickstart.toml", "--dry-run", "--out"])
        .arg(&out)
        .current_dir(ROOT)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    for line in [
        format!("into {}", out.display()),
        format!("-> {}", out.join("diffusion").display()),
        format!("report -> {}", out.join("report.html").display()),
    ] {
        assert!(stdout.contains(&line), "the plan lacks `{line}`:\n{stdout}");
    }
    assert!(!stdout.contains("reports/quickstart"), "{stdout}");
    assert!(!out.exists(), "--dry-run wrote {}", out.display());
}
