//! Health gates: the checks an SE runs once it serves again on the new
//! version, before its upgrade counts as done — a GET on each gated virtual
//! service it serves (on its own address), and executables on the node.
//! Every check runs; the command fails if any does, naming each result.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use common::session::GateCheck;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long one HTTP try may take.
const HTTP_TRY: Duration = Duration::from_secs(2);
/// Between HTTP tries.
const HTTP_PAUSE: Duration = Duration::from_secs(1);

/// Runs every check against the services at `ip`; `Ok` names each pass,
/// `Err` each result, failures first. An exec check runs only a program
/// this node's configuration lists in `allowed` (`allowed_gate_programs`):
/// whoever may edit SE groups through the API does not thereby run
/// commands as root on the SEs.
pub async fn run(checks: &[GateCheck], ip: IpAddr, allowed: &[PathBuf]) -> Result<String, String> {
    let mut passed = vec![];
    let mut failed = vec![];
    for c in checks {
        match check(c, ip, allowed).await {
            Ok(m) => passed.push(format!("{c}: {m}")),
            Err(m) => failed.push(format!("{c}: {m}")),
        }
    }
    if failed.is_empty() {
        Ok(format!("{} health gate(s) passed: {}", passed.len(), passed.join("; ")))
    } else {
        failed.extend(passed.into_iter().map(|p| format!("passed {p}")));
        Err(failed.join("; "))
    }
}

async fn check(c: &GateCheck, ip: IpAddr, allowed: &[PathBuf]) -> Result<String, String> {
    match c {
        GateCheck::Http { port, path, status, tries, .. } => {
            let mut last = String::new();
            for attempt in 1..=*tries {
                match tokio::time::timeout(HTTP_TRY, get(ip, *port, path)).await {
                    Ok(Ok(got)) if got == *status => return Ok(format!("{got} on try {attempt}")),
                    Ok(Ok(got)) => last = format!("answered {got}"),
                    Ok(Err(e)) => last = e,
                    Err(_) => last = format!("no answer within {} s", HTTP_TRY.as_secs()),
                }
                if attempt < *tries {
                    tokio::time::sleep(HTTP_PAUSE).await;
                }
            }
            Err(format!("{last} (after {tries} tries, expected {status})"))
        }
        GateCheck::Exec { argv, timeout_secs } => {
            if !allowed.iter().any(|p| p.as_os_str() == argv[0].as_str()) {
                tracing::warn!(program = %argv[0], "refused an exec health gate: its program is not in allowed_gate_programs");
                return Err(format!(
                    "not allowed on this node: {} is not in allowed_gate_programs of its node.toml",
                    argv[0].chars().take(200).collect::<String>()
                ));
            }
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).kill_on_drop(true).stdin(std::process::Stdio::null());
            let run = tokio::time::timeout(Duration::from_secs((*timeout_secs).into()), cmd.output());
            let out = match run.await {
                Err(_) => return Err(format!("did not end within {timeout_secs} s; it was stopped")),
                Ok(Err(e)) => return Err(format!("cannot run {}: {e}", argv[0])),
                Ok(Ok(out)) => out,
            };
            let said = |b: &[u8]| String::from_utf8_lossy(b).lines().last().unwrap_or_default().trim().to_owned();
            let last = [said(&out.stderr), said(&out.stdout)].into_iter().find(|l| !l.is_empty());
            let tail = last.map(|l| format!(": {}", l.chars().take(200).collect::<String>())).unwrap_or_default();
            match out.status.code() {
                Some(0) => Ok(format!("exit 0{tail}")),
                Some(code) => Err(format!("exit {code}{tail}")),
                None => Err(format!("killed by a signal{tail}")),
            }
        }
    }
}

/// `GET path` on `ip:port`: the status code it answers.
async fn get(ip: IpAddr, port: u16, path: &str) -> Result<u16, String> {
    let mut tcp = TcpStream::connect((ip, port)).await.map_err(|e| format!("cannot connect to {ip}:{port}: {e}"))?;
    let host = std::net::SocketAddr::new(ip, port);
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: molt-gate\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.map_err(|e| format!("cannot send the request: {e}"))?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = tcp.read(&mut buf).await.map_err(|e| format!("cannot read the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let code = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    code.ok_or_else(|| format!("not an HTTP answer: {:?}", line.lines().next().unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_check_runs_and_a_failure_names_each_result() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 512];
                let _ = s.read(&mut b).await;
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let http =
            |status| GateCheck::Http { virtual_service: "web".into(), port, path: "/health".into(), status, tries: 2 };
        let exec =
            |argv: &[&str], t| GateCheck::Exec { argv: argv.iter().map(|s| s.to_string()).collect(), timeout_secs: t };
        let allowed: Vec<PathBuf> = ["/bin/sh", "/bin/sleep", "/no/such/check"].iter().map(PathBuf::from).collect();
        let ok = run(&[http(200), exec(&["/bin/sh", "-c", "echo fine"], 5)], ip, &allowed).await.unwrap();
        assert!(ok.starts_with("2 health gate(s) passed") && ok.contains("exit 0: fine"), "{ok}");
        let bad = run(
            &[http(204), exec(&["/bin/sh", "-c", "echo sick >&2; exit 3"], 5), exec(&["/bin/sleep", "5"], 1)],
            ip,
            &allowed,
        )
        .await
        .unwrap_err();
        assert!(bad.contains("answered 200 (after 2 tries, expected 204)"), "{bad}");
        assert!(bad.contains("exit 3: sick"), "{bad}");
        assert!(bad.contains("did not end within 1 s"), "{bad}");
        let missing = run(&[exec(&["/no/such/check"], 5)], ip, &allowed).await.unwrap_err();
        assert!(missing.contains("cannot run /no/such/check"), "{missing}");
    }

    /// Issue 25, 4: an exec gate set through the API ran `/bin/sh` as root
    /// on every SE. A node runs only the programs its own node.toml allows.
    #[tokio::test]
    async fn an_exec_gate_runs_only_a_program_the_node_allows() {
        let d = tempfile::tempdir().unwrap();
        let proof = d.path().join("ran");
        let sh = GateCheck::Exec {
            argv: vec!["/bin/sh".into(), "-c".into(), format!("touch {}", proof.display())],
            timeout_secs: 5,
        };
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for allowed in [vec![], vec![PathBuf::from("/usr/bin/true")], vec![PathBuf::from("/bin/sh/")]] {
            let e = run(std::slice::from_ref(&sh), ip, &allowed).await.unwrap_err();
            assert!(e.contains("not allowed on this node: /bin/sh is not in allowed_gate_programs"), "{e}");
            assert!(!proof.exists(), "the program ran");
        }
        run(&[sh], ip, &[PathBuf::from("/bin/sh")]).await.unwrap();
        assert!(proof.exists());
    }
}
