//! What the relay can see of its own confinement, for its log: the shim
//! confines it (role `fac`), and a provider or a test reads this line to
//! check that from the inside.

/// `CapEff=0000000000000000 NoNewPrivs=1 Seccomp=2 uid=0
/// socket(AF_INET)=EPERM`: the relay's capabilities, seccomp mode and uid
/// as the kernel reports them, and what happens when it tries to open an
/// internet socket.
pub fn describe() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "CapEff={} NoNewPrivs={} Seccomp={} uid={} socket(AF_INET)={}",
        field("CapEff"),
        field("NoNewPrivs"),
        field("Seccomp"),
        field("Uid"),
        inet_socket()
    )
}

fn inet_socket() -> String {
    // SAFETY: plain syscalls on a descriptor this function owns.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return errno_name(errno);
    }
    unsafe { libc::close(fd) };
    "allowed".into()
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::EPERM => "EPERM".into(),
        libc::EACCES => "EACCES".into(),
        libc::EAFNOSUPPORT => "EAFNOSUPPORT".into(),
        other => format!("errno {other}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_every_field() {
        let line = super::describe();
        for key in [
            "CapEff=",
            "NoNewPrivs=",
            "Seccomp=",
            "uid=",
            "socket(AF_INET)=",
        ] {
            assert!(line.contains(key), "{line}");
        }
        // Unconfined, as the test runs: the socket opens.
        assert!(line.ends_with("socket(AF_INET)=allowed"), "{line}");
    }
}
