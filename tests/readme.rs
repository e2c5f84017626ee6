//! The README's "Protect your own API in five minutes", run as written: every `sh` block of
//! that section, in order, in one `bash -euo pipefail`, in a fresh directory, with the built
//! `tokengate` first on PATH. So the walkthrough cannot drift from the binary.
//!
//! The one liberty taken: the section uses the default ports (8080 proxy, 9090 admin, 3000
//! for the stand-in API); the test swaps in free ephemeral ones (the listeners through
//! `TOKENGATE_PROXY__LISTEN` / `TOKENGATE_ADMIN__LISTEN`, the text of the blocks by
//! replacement), so that it never collides with anything else on the machine.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const SECTION: &str = "## Protect your own API in five minutes";

/// The section's `sh` blocks, joined in order.
fn walkthrough(readme: &str) -> String {
    let start = readme
        .find(SECTION)
        .expect("the README has the five-minute section");
    let rest = &readme[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut script = String::new();
    for b in section.split("```sh\n").skip(1) {
        let (code, _) = b.split_once("```").expect("a closed sh block");
        script.push_str(code);
    }
    script
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test]
async fn the_five_minute_walkthrough_runs_as_written() {
    let test = "the_five_minute_walkthrough_runs_as_written";
    for tool in ["curl", "python3"] {
        if !have(tool) {
            return skip("curl", test, &format!("{tool} is not installed"));
        }
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let (proxy, admin, api) = (free_port(), free_port(), free_port());
    let script = walkthrough(&readme)
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{proxy}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{admin}"))
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{api}"))
        .replace("http.server 3000", &format!("http.server {api}"));
    assert!(
        script.contains("token create") && script.contains("serve"),
        "{script}"
    );
    for fixed in ["8080", "9090", "3000"] {
        assert!(
            !script.contains(fixed),
            "a fixed port is left in:\n{script}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_tokengate"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("TOKENGATE_PROXY__LISTEN", format!("127.0.0.1:{proxy}"))
        .env("TOKENGATE_ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .stdin(Stdio::null())
        // Files, not pipes: the background processes keep their copies open after bash exits.
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOKENGATE_") && !k.ends_with("__LISTEN") {
            cmd.env_remove(k);
        }
    }
    // The background jobs the walkthrough starts (the stand-in API, the gateway) are in its
    // process group, stopped with it however it ends (SIGTERM: the gateway drains and exits).
    let (out, finished) =
        tokio::task::spawn_blocking(move || run_grouped(cmd, Duration::from_secs(120)))
            .await
            .unwrap();
    let status = finished.then_some(out.status);
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let (stdout, stderr) = (read("stdout"), read("stderr"));
    let log = read("my-gateway/gateway.log");
    let shown =
        format!("script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}\ngateway.log:\n{log}");
    let status = status.unwrap_or_else(|| panic!("the walkthrough hung for 2 minutes: {shown}"));
    assert!(status.success(), "{status}: {shown}");
    // The API answered through the gateway with the token (Python's directory listing) ...
    assert!(stdout.contains("<!DOCTYPE HTML>"), "{shown}");
    // ... refused without it ...
    assert!(stdout.lines().any(|l| l.trim() == "401"), "{shown}");
    // ... and the CLI lists the token and the address that used it.
    let listed = stdout.lines().any(|l| {
        l.split_whitespace()
            .take(3)
            .eq(["my-app", "active", "orders"])
    });
    assert!(listed, "{shown}");
    let ip_row = stdout
        .lines()
        .any(|l| l.starts_with("127.0.0.1") && l.split_whitespace().nth(3) == Some("1"));
    assert!(ip_row, "{shown}");
    // The secret went to the shell variable only: never into the log.
    assert!(log.contains("generated a new admin key"), "{shown}");
    assert!(!log.contains("tg_"), "{shown}");
    // Nothing the walkthrough started outlives it: the gateway and the stand-in API stop
    // listening (the gateway drains first).
    for port in [admin, proxy, api] {
        eventually(
            &format!("nothing listens on {port} after the walkthrough"),
            Duration::from_secs(30),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                    .then_some(())
            },
        )
        .await;
    }
}
