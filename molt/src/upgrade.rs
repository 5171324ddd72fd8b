//! `molt upgrade prestage image_path PATH`: upload a local file (or use a
//! `controller://` path), start the operation, follow it to its end.

use std::{path::Path, time::Duration};

use indicatif::{ProgressBar, ProgressStyle};
use molt_api::{UpgradeStatus, requests::Uploaded, status::OpState};

use crate::client::{Api, ClientError};

/// The image an operator named: a file here, or a path on the leader.
pub async fn image_path_on_leader(api: &Api, path: &str, quiet: bool) -> Result<String, ClientError> {
    if path.starts_with("controller://") {
        return Ok(path.to_owned());
    }
    let file = Path::new(path);
    let meta = std::fs::metadata(file).map_err(|e| {
        ClientError::Config(format!("image {path}: {e}; give a local package file or a controller:// path"))
    })?;
    if !meta.is_file() {
        return Err(ClientError::Config(format!("image {path} is not a file")));
    }
    // Fail fast on what is plainly not a package, before moving any bytes.
    let header = std::fs::File::open(file).map_err(ClientError::Io)?;
    if let Err(e) = common::package::read_manifest(std::io::BufReader::new(header)) {
        return Err(ClientError::Config(format!("{path}: {e}")));
    }
    let name: String = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("controller.pkg")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' })
        .collect();
    let bar = bar(meta.len(), "upload", quiet);
    let b = bar.clone();
    let answer = api.upload(file, name.trim_start_matches('.'), move |n| b.set_position(n)).await;
    bar.finish_and_clear();
    let answer: Uploaded = crate::client::typed("/api/upload", answer?)?;
    if !quiet {
        eprintln!("uploaded {} ({}, sha256 {})", answer.image_path, crate::render::bytes(meta.len()), answer.sha256);
    }
    Ok(answer.image_path)
}

fn bar(len: u64, what: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>9} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} {{msg}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    b
}

/// Follows the running operation until it ends; returns the final status.
pub async fn follow(api: &Api, quiet: bool) -> Result<UpgradeStatus, ClientError> {
    let bar = bar(100, "progress", quiet);
    let mut unreachable = 0;
    loop {
        let v: UpgradeStatus = match api.get_as("/api/cluster/upgrade/status").await {
            Ok(v) => {
                unreachable = 0;
                v
            }
            // The leader may be briefly away (rebooting): keep asking for a while.
            Err(ClientError::Unreachable { .. }) if unreachable < 300 => {
                unreachable += 1;
                bar.set_message("waiting for the leader...");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        bar.set_position(u64::from(v.progress));
        let left = crate::render::eta(&v).map(|e| format!(", {e}")).unwrap_or_default();
        let phase = v.phase.map(|p| format!("{} ", crate::render::name(&p))).unwrap_or_default();
        bar.set_message(format!("{phase}{}{left}", crate::render::name(&v.state)));
        if !matches!(v.state, OpState::InProgress | OpState::Prechecking) {
            bar.finish_and_clear();
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
