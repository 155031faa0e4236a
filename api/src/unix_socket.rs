//! Binding and connecting unix sockets whose paths are longer than
//! `sun_path` holds (108 bytes with its NUL). An app's socket,
//! `<socket root>/guests/<guest>/apps/<app id>.sock`, is one for a CRI
//! container (a 64-character app id) on a guest of more than a dozen
//! characters. Such a path is reached through its directory's fd,
//! `/proc/self/fd/<fd>/<name>`, which fits whatever the directory's length.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path `sun_path` takes, without its NUL.
const SUN_PATH_MAX: usize = 107;

/// Binds `path`, however long.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    through_dir(path, |p| UnixListener::bind(p))
}

/// Connects to `path`, however long.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    through_dir(path, |p| UnixStream::connect(p))
}

fn through_dir<T>(path: &Path, op: impl Fn(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return op(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return op(path);
    };
    // O_PATH: only a handle to name the directory by, no read access needed.
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_DIRECTORY)
        .open(dir)?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
    op(&short)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_socket_past_sun_path_binds_and_answers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("g".repeat(60)).join("apps");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{}.sock", "a".repeat(64)));
        assert!(path.as_os_str().len() > SUN_PATH_MAX);
        assert!(UnixListener::bind(&path).is_err(), "std alone cannot");
        let listener = bind(&path).unwrap();
        assert!(path.exists(), "the socket has its long name");
        let mut client = connect(&path).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn a_short_path_is_used_as_it_is() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("s.sock");
        let _listener = bind(&path).unwrap();
        connect(&path).unwrap();
    }
}
