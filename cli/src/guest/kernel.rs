//! The test guest's kernel: Debian's cloud kernel and its `-dbg` package,
//! fetched with `apt-get download` into a cache outside the repository and
//! unpacked to the few files a guest needs.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The meta-package whose dependency names the current cloud kernel.
const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Small modules with no dependencies, loaded by the guest so module listing
/// has ground truth.
pub const GUEST_MODULES: &[&str] = &[
    "kernel/lib/crc7.ko",
    "kernel/lib/crc-itu-t.ko",
    "kernel/drivers/net/dummy.ko",
];

/// A kernel release (e.g. `6.1.0-56-cloud-amd64`) unpacked in the cache.
#[derive(Debug, Clone)]
pub struct CachedKernel {
    pub release: String,
    pub dir: PathBuf,
}

impl CachedKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn vmlinux(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn system_map(&self) -> PathBuf {
        self.dir.join("System.map")
    }
    pub fn profile(&self) -> PathBuf {
        self.dir.join("profile.json")
    }
    pub fn module(&self, relative: &str) -> PathBuf {
        self.dir.join("modules").join(module_file_name(relative))
    }
}

pub fn module_file_name(relative: &str) -> &str {
    relative.rsplit('/').next().unwrap_or(relative)
}

pub fn cache_root() -> PathBuf {
    std::env::var_os("FURNACE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/furnace"))
        .join("kernels")
}

/// The release of Debian's current cloud kernel, from the apt lists.
pub fn current_release() -> Result<String> {
    let output = Command::new("apt-cache")
        .args(["show", "--no-all-versions", META_PACKAGE])
        .output()
        .context("running apt-cache (is this a Debian machine?)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    release_from_depends(&text).with_context(|| {
        format!("apt-cache knows no {META_PACKAGE}; run `apt-get update` (or `make deps`) first")
    })
}

fn release_from_depends(show: &str) -> Option<String> {
    let depends = show.lines().find_map(|l| l.strip_prefix("Depends:"))?;
    depends
        .split(',')
        .map(str::trim)
        .find_map(|dep| dep.strip_prefix("linux-image-"))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|release| release.ends_with("-cloud-amd64"))
        .map(str::to_owned)
}

/// Returns the kernel `release` (or the current one), fetching and unpacking
/// it first if it is not cached. Safe to call concurrently: the unpacked
/// directory appears by an atomic rename.
pub fn ensure(release: Option<&str>) -> Result<CachedKernel> {
    let release = match release {
        Some(r) => r.to_owned(),
        None => current_release()?,
    };
    let dir = cache_root().join(&release);
    let kernel = CachedKernel { release, dir };
    if kernel.profile().is_file() {
        return Ok(kernel);
    }
    std::fs::create_dir_all(cache_root())
        .with_context(|| format!("creating {}", cache_root().display()))?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}-", kernel.release))
        .tempdir_in(cache_root())
        .context("creating a staging directory in the kernel cache")?;
    eprintln!(
        "furnace: fetching Debian kernel {} and its -dbg package",
        kernel.release
    );
    fetch_into(&kernel.release, staging.path())?;
    eprintln!("furnace: building the ISF profile for {}", kernel.release);
    let profile =
        furnace_vmi::profile::build::build_profile(&furnace_vmi::profile::build::BuildInputs {
            vmlinux: &staging.path().join("vmlinux"),
            system_map: Some(&staging.path().join("System.map")),
        })?;
    let json = serde_json::to_vec(&profile)?;
    std::fs::write(staging.path().join("profile.json"), json)?;
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &kernel.dir) {
        // Another process finished first; its copy is as good as ours.
        let _ = std::fs::remove_dir_all(&staged);
        if !kernel.profile().is_file() {
            return Err(e).with_context(|| format!("installing {}", kernel.dir.display()));
        }
    }
    Ok(kernel)
}

fn fetch_into(release: &str, dir: &Path) -> Result<()> {
    let image = format!("linux-image-{release}");
    let dbg = format!("linux-image-{release}-dbg");
    let downloads = dir.join("debs");
    std::fs::create_dir_all(&downloads)?;
    run(Command::new("apt-get")
        .args(["download", "-q", &image, &dbg])
        .current_dir(&downloads))
    .with_context(|| format!("apt-get download {image} {dbg}"))?;
    let deb = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&downloads)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{prefix}_")))
            })
            .with_context(|| format!("apt-get download left no {prefix}_*.deb"))
    };
    let image_deb = deb(&image)?;
    let dbg_deb = deb(&dbg)?;
    let modules_dir = format!("./lib/modules/{release}");
    let mut wanted: Vec<String> = vec![format!("./boot/vmlinuz-{release}")];
    wanted.extend(GUEST_MODULES.iter().map(|m| format!("{modules_dir}/{m}")));
    extract(&image_deb, dir, &wanted)?;
    extract(
        &dbg_deb,
        dir,
        &[
            format!("./usr/lib/debug/boot/vmlinux-{release}"),
            format!("./usr/lib/debug/boot/System.map-{release}"),
        ],
    )?;
    std::fs::rename(
        dir.join(format!("boot/vmlinuz-{release}")),
        dir.join("vmlinuz"),
    )?;
    std::fs::rename(
        dir.join(format!("usr/lib/debug/boot/vmlinux-{release}")),
        dir.join("vmlinux"),
    )?;
    std::fs::rename(
        dir.join(format!("usr/lib/debug/boot/System.map-{release}")),
        dir.join("System.map"),
    )?;
    std::fs::create_dir_all(dir.join("modules"))?;
    for module in GUEST_MODULES {
        std::fs::rename(
            dir.join(&modules_dir).join(module),
            dir.join("modules").join(module_file_name(module)),
        )?;
    }
    for scratch in ["debs", "boot", "usr", "lib"] {
        std::fs::remove_dir_all(dir.join(scratch))?;
    }
    Ok(())
}

/// Extracts `members` of a .deb's data archive into `dir`. `--occurrence`
/// lets tar stop once it has them instead of inflating the whole package.
fn extract(deb: &Path, dir: &Path, members: &[String]) -> Result<()> {
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        // It reports the SIGPIPE it gets when tar stops early; tar's status decides.
        .stderr(Stdio::null())
        .spawn()
        .context("running dpkg-deb")?;
    let status = Command::new("tar")
        .args(["-x", "--occurrence=1", "-C"])
        .arg(dir)
        .args(members)
        .stdin(dpkg.stdout.take().expect("stdout was piped"))
        .status()
        .context("running tar")?;
    // tar closing the pipe early makes dpkg-deb die of SIGPIPE; that is expected.
    let _ = dpkg.wait();
    if !status.success() {
        bail!(
            "extracting {members:?} from {} failed ({status})",
            deb.display()
        );
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let output = command.output()?;
    if !output.status.success() {
        bail!(
            "{} ({}): {}",
            command.get_program().to_string_lossy(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_comes_from_the_meta_package_dependency() {
        let show = "Package: linux-image-cloud-amd64\nVersion: 6.1.192-2\nDepends: linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)\n";
        assert_eq!(
            release_from_depends(show).as_deref(),
            Some("6.1.0-56-cloud-amd64")
        );
        assert_eq!(release_from_depends("Package: x\n"), None);
    }
}
