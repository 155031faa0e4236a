//! `furnace keygen` and `furnace backend`: the tenant's side of facilities
//! (docs/facilities.md).

use anyhow::{bail, Context, Result};
use furnace_api::facilities::{keys, Keypair};
use furnace_fac::backend::{AppMessage, AppMessageKind, Backend};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Writes NAME.key (the private key, 0600) and NAME.pub (one line).
    pub name: PathBuf,
}

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let (key, public) = Keypair::generate().write(&args.name)?;
    println!("{}", std::fs::read_to_string(&public)?.trim());
    eprintln!("wrote {} and {}", key.display(), public.display());
    Ok(())
}

/// The tenant's ready-made backend: one JSON line on stdout per app message;
/// lines on stdin send to apps: `notify APP TEXT` or `broadcast TEXT`.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// host:port to listen on.
    #[arg(long)]
    pub listen: String,
    /// The backend's private key (`furnace keygen`).
    #[arg(long)]
    pub key: PathBuf,
    /// An app's public key file; the app's name is the file's stem.
    #[arg(long = "allow", required = true)]
    pub allow: Vec<PathBuf>,
    /// Answers each request with this command's stdout (run by `sh -c`,
    /// the request on its stdin, FURNACE_APP in its environment); else `ok`.
    #[arg(long)]
    pub on_request: Option<String>,
}

pub fn backend(args: BackendArgs) -> Result<()> {
    let key = keys::read_private(&args.key)?;
    let mut allow = Vec::new();
    for path in &args.allow {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .with_context(|| format!("{}: no file name to name the app by", path.display()))?;
        allow.push((name.to_owned(), keys::read_public(path)?));
    }
    let on_request = args.on_request.clone();
    let on_message = Arc::new(move |m: &AppMessage| {
        print_message(m);
        match (m.kind, &on_request) {
            (AppMessageKind::Request, Some(cmd)) => run_hook(cmd, m).unwrap_or_else(|e| {
                eprintln!("furnace backend: --on-request: {e:#}");
                Vec::new()
            }),
            (AppMessageKind::Request, None) => b"ok".to_vec(),
            (AppMessageKind::Notify, _) => Vec::new(),
        }
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        eprintln!("furnace backend: listening on {}", listener.local_addr()?);
        let backend = Backend::new(key, allow, on_message);
        let from_stdin = backend.clone();
        std::thread::spawn(move || commands(&from_stdin));
        backend.serve(listener).await?;
        Ok(())
    })
}

fn print_message(m: &AppMessage) {
    let kind = match m.kind {
        AppMessageKind::Notify => "notify",
        AppMessageKind::Request => "request",
    };
    let mut line = serde_json::json!({ "app": m.app, "type": kind });
    match std::str::from_utf8(&m.data) {
        Ok(text) => line["data"] = text.into(),
        Err(_) => {
            use base64::Engine;
            line["data_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&m.data)
                .into()
        }
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn run_hook(cmd: &str, m: &AppMessage) -> Result<Vec<u8>> {
    let mut child = std::process::Command::new("sh")
        .args(["-c", cmd])
        .env("FURNACE_APP", &m.app)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(&m.data)?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("`{cmd}` exited with {}", out.status);
    }
    Ok(out.stdout)
}

fn commands(backend: &Backend) {
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { return };
        let result = match line.split_once(' ') {
            Some(("broadcast", text)) => backend
                .broadcast(text.as_bytes())
                .map_err(|e| e.to_string()),
            Some(("notify", rest)) => match rest.split_once(' ') {
                Some((app, text)) => backend
                    .notify(app, text.as_bytes())
                    .map_err(|e| e.to_string()),
                None => Err("write: notify APP TEXT".into()),
            },
            _ => Err("write `notify APP TEXT` or `broadcast TEXT`".into()),
        };
        match result {
            Ok(n) => eprintln!("furnace backend: sent to {n} session(s)"),
            Err(e) => eprintln!("furnace backend: {e}"),
        }
    }
}
