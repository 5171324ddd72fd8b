//! Headless Chromium driven over the DevTools protocol, for the web page's
//! end-to-end test. Chromium talks on a pipe (`--remote-debugging-pipe`:
//! commands on its fd 3, answers on its fd 4, each message ending in a NUL
//! byte), so neither a WebSocket client nor a driver binary is needed.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use base64::Engine;
use serde_json::{Value, json};

/// Where Debian's `chromium` package puts the browser.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The browser, or why there is none.
pub fn chromium() -> PathBuf {
    let p = std::env::var_os("MOLT_CHROMIUM").map(PathBuf::from).unwrap_or_else(|| CHROMIUM.into());
    assert!(
        p.is_file(),
        "the web page test needs Chromium at {}: install Debian's package (`apt-get install chromium`, \
         as .ci/run does) or set MOLT_CHROMIUM",
        p.display()
    );
    p
}

/// A headless browser with one page open.
#[derive(Debug)]
pub struct Browser {
    child: Child,
    to_browser: ChildStdin,
    from_browser: mpsc::Receiver<Value>,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
    /// Where screenshots go.
    pub shots: PathBuf,
    shot_seq: u32,
}

impl Browser {
    /// Starts Chromium with a fresh profile and opens a blank page; screenshots
    /// are written to `shots`.
    pub fn start(shots: &Path) -> Self {
        let profile = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(shots).unwrap();
        // The shell hands our stdin and stdout to Chromium as fds 3 and 4.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                // The page is served with the cluster's own CA, which this
                // fresh profile does not trust.
                "--ignore-certificate-errors",
                "--remote-debugging-pipe",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let to_browser = child.stdin.take().unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let (tx, from_browser) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            while reader.read_until(0, &mut buf).is_ok_and(|n| n > 0) {
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&buf)
                    && tx.send(v).is_err()
                {
                    break;
                }
                buf.clear();
            }
        });
        let mut b = Self {
            child,
            to_browser,
            from_browser,
            session: String::new(),
            next_id: 0,
            _profile: profile,
            shots: shots.to_owned(),
            shot_seq: 0,
        };
        let target = b.call("Target.createTarget", json!({ "url": "about:blank" }));
        let attached = b.call("Target.attachToTarget", json!({ "targetId": target["targetId"], "flatten": true }));
        b.session = attached["sessionId"].as_str().unwrap().to_owned();
        for domain in ["Page.enable", "Runtime.enable", "DOM.enable"] {
            b.call(domain, json!({}));
        }
        b
    }

    /// Sends a command (to the page once one is attached) and returns its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        self.to_browser.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.from_browser.recv_timeout(left).unwrap_or_else(|_| panic!("no answer to {method}"));
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {}", v["error"]);
                return v["result"].clone();
            }
            Self::report_event(&v);
        }
    }

    /// Shows the page's console errors and uncaught exceptions in the test log.
    fn report_event(v: &Value) {
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => eprintln!("page exception: {}", v["params"]["exceptionDetails"]),
            Some("Runtime.consoleAPICalled") if v["params"]["type"] == "error" => {
                eprintln!("page console error: {}", v["params"]["args"])
            }
            _ => {}
        }
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
        // The old document (about:blank) is complete already: wait for the new one.
        let target = serde_json::to_string(url).expect("a string");
        self.wait_for(&format!("location.href.startsWith({target}) && document.readyState === 'complete'"), 30);
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "awaitPromise": true, "returnByValue": true, "userGesture": true }),
        );
        assert!(r.get("exceptionDetails").is_none(), "{expr} threw: {}", r["exceptionDetails"]);
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is true; panics with `expr` after `secs`.
    pub fn wait_for(&mut self, expr: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.eval(&format!("!!({expr})")) != json!(true) {
            assert!(Instant::now() < deadline, "the page never satisfied `{expr}` within {secs} s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element `selector` names.
    pub fn click(&mut self, selector: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let found = self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); if (!e || e.disabled) return false; e.click(); return true; }})()"
        ));
        assert_eq!(found, json!(true), "{selector} is missing or disabled");
    }

    /// Types `text` into the input `selector` names.
    pub fn fill(&mut self, selector: &str, text: &str) {
        let sel = serde_json::to_string(selector).unwrap();
        let val = serde_json::to_string(text).unwrap();
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({sel}); e.value = {val}; \
             e.dispatchEvent(new Event('input', {{ bubbles: true }})); }})()"
        ));
    }

    /// Chooses `file` in the file input `selector` names, as a user would.
    pub fn choose_file(&mut self, selector: &str, file: &Path) {
        let sel = serde_json::to_string(selector).unwrap();
        let r = self.call("Runtime.evaluate", json!({ "expression": format!("document.querySelector({sel})") }));
        let object = r["result"]["objectId"].clone();
        self.call("DOM.setFileInputFiles", json!({ "files": [file], "objectId": object }));
    }

    /// The text of the element `selector` names.
    pub fn text(&mut self, selector: &str) -> String {
        let sel = serde_json::to_string(selector).unwrap();
        self.eval(&format!("document.querySelector({sel})?.innerText ?? ''")).as_str().unwrap_or("").to_owned()
    }

    /// Saves a PNG of the whole page as `NN-name.png`; returns its path.
    pub fn screenshot(&mut self, name: &str) -> PathBuf {
        let m = self.call("Page.getLayoutMetrics", json!({}));
        let size = &m["cssContentSize"];
        let clip = json!({ "x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1 });
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png", "clip": clip, "captureBeyondViewport": true }));
        let png = base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().unwrap()).unwrap();
        self.shot_seq += 1;
        let path = self.shots.join(format!("{:02}-{name}.png", self.shot_seq));
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// axe-core's script: `MOLT_AXE_JS`, else where `.ci/run` installs it
/// (`npm install --prefix target/tools axe-core@4`).
pub fn axe_script() -> String {
    let p = std::env::var_os("MOLT_AXE_JS")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("tools/node_modules/axe-core/axe.min.js"));
    std::fs::read_to_string(&p).unwrap_or_else(|e| {
        panic!(
            "the accessibility test needs axe-core at {} ({e}): run .ci/run, or `npm install --prefix target/tools \
             axe-core@4`, or set MOLT_AXE_JS",
            p.display()
        )
    })
}

/// One rule axe-core found broken on the page.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AxeViolation {
    /// The rule (`label`, `color-contrast`, `region`, ...).
    pub id: String,
    /// `minor`, `moderate`, `serious` or `critical`.
    pub impact: Option<String>,
    /// What the rule asks for.
    pub help: String,
    /// The first elements that break it (CSS selectors).
    pub targets: Vec<String>,
}

impl Browser {
    /// Runs axe-core (WCAG 2.x A and AA rules, and best practices) on the
    /// page as it is now; returns what it found broken.
    pub fn axe(&mut self, script: &str) -> Vec<AxeViolation> {
        if self.eval("typeof window.axe") != json!("object") {
            self.eval(&format!("{script}\n;0"));
        }
        let found = self.eval(
            "axe.run(document, {resultTypes: ['violations']}).then(r => r.violations.map(v => ({\
               id: v.id, impact: v.impact, help: v.help,\
               targets: v.nodes.slice(0, 5).map(n => n.target.join(' '))})))",
        );
        serde_json::from_value(found.clone()).unwrap_or_else(|e| panic!("axe answered {found}: {e}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace's `target/` dir, where screenshots are kept for review.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
}
