//! Child processes: finding programs, picking free ports, locating the
//! release binary, and a guard that stops a child when dropped (also while
//! a panic unwinds), so no server outlives the bench.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a child gets to exit after SIGTERM before it is SIGKILLed.
const GRACE: Duration = Duration::from_secs(5);

/// Set once SIGINT or SIGTERM arrived.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Pids of the children alive right now, for the signal handler.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Finds `program` on `PATH` or in the sbin directories (Debian installs
/// nginx in /usr/sbin, which is often not on an ordinary user's `PATH`).
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A free loopback port: bound, read, released for the child to take.
pub fn free_port() -> Result<u16, String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    Ok(port)
}

/// `true` when this process runs as root (`/proc/self` belongs to the
/// effective user).
pub fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The last `lines` lines of a log file, indented, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let shown: Vec<String> = all[start..].iter().map(|l| format!("    | {l}")).collect();
    if shown.is_empty() {
        format!("    ({} is empty)", path.display())
    } else {
        shown.join("\n")
    }
}

/// The release `pullthrough` binary: `BENCH_BINARY` when set; else `cargo bench` builds it alongside the
/// bench (and says where in `CARGO_BIN_EXE_pullthrough`); failing that it
/// is looked for next to the bench executable
/// (`target/release/deps/load-<hash>` → `target/release/pullthrough`) and,
/// if missing, built with `cargo build --release --bin pullthrough`.
pub fn pullthrough_binary() -> Result<PathBuf, String> {
    // Another build to measure with this very bench (a before and after).
    if let Some(path) = std::env::var_os("BENCH_BINARY").map(PathBuf::from) {
        return match path.is_file() {
            true => Ok(path),
            false => Err(format!("BENCH_BINARY: {} is not a file", path.display())),
        };
    }
    if let Some(path) = option_env!("CARGO_BIN_EXE_pullthrough").map(PathBuf::from)
        && path.is_file()
    {
        return Ok(path);
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected bench location {}", exe.display()))?
        .to_owned();
    let binary = profile_dir.join("pullthrough");
    if binary.is_file() {
        return Ok(binary);
    }
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("cargo"));
    eprintln!(
        "{} not found; running cargo build --release --bin pullthrough",
        binary.display()
    );
    let status = Command::new(&cargo)
        .args(["build", "--release", "--bin", "pullthrough"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("cannot run {}: {e}", cargo.display()))?;
    if !status.success() || !binary.is_file() {
        return Err(format!(
            "cargo build --release --bin pullthrough failed ({status}); {} is still missing",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Raises this process's soft limit on open files to its hard limit and
/// returns the limit now in force. A rollout burst holds thousands of
/// sockets open at once, on both ends; the servers the bench starts
/// afterwards inherit the raised limit.
pub fn raise_open_files_limit() -> Result<u64, String> {
    rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot raise the open files limit (RLIMIT_NOFILE): {e}"))
}

/// Fails once the bench was interrupted, so it winds down through the
/// ordinary error path and every guard and temporary directory is dropped.
pub fn check_interrupted() -> Result<(), String> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err("interrupted".to_owned())
    } else {
        Ok(())
    }
}

/// On SIGINT or SIGTERM, stops every child (which fails whatever the main
/// thread is waiting on) and flags the bench as interrupted; a second
/// signal exits at once.
pub fn handle_signals(rt: &tokio::runtime::Runtime) {
    use tokio::signal::unix::{SignalKind, signal};
    rt.spawn(async {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        INTERRUPTED.store(true, Ordering::SeqCst);
        eprintln!("\ninterrupted: stopping the servers (again to exit at once)");
        let pids = RUNNING.lock().map(|p| p.clone()).unwrap_or_default();
        for pid in pids {
            send_term(pid);
        }
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        std::process::exit(130);
    });
}

/// `kill -TERM pid`; `false` if that could not be done.
fn send_term(pid: u32) -> bool {
    ["kill", "/bin/kill", "/usr/bin/kill"].iter().any(|kill| {
        Command::new(kill)
            .args(["-TERM", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// A running child process, stopped when dropped: SIGTERM first (so
/// nginx's master takes its workers along and pullthrough shuts down
/// cleanly), SIGKILL if it is still there after a grace period.
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `command` with stdin closed.
    pub fn spawn(name: &str, command: &mut Command) -> Result<ChildGuard, String> {
        check_interrupted()?;
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        if let Ok(mut running) = RUNNING.lock() {
            running.push(child.id());
        }
        Ok(ChildGuard {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// The child's process id, while it has not been reaped.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` once the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok().flatten()?;
        forget(child.id());
        Some(status)
    }

    /// Waits for the child to exit on its own; fails (and the guard kills
    /// it) once `timeout` has passed or the bench is interrupted.
    pub fn wait_timeout(mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            check_interrupted()?;
            if let Some(status) = self.exited() {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "{} did not finish within {timeout:?}; killed",
            self.name
        ))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Forgotten first: once reaped, its pid may belong to someone else.
        forget(child.id());
        stop(&self.name, &mut child);
    }
}

/// Takes `pid` off the signal handler's list.
fn forget(pid: u32) {
    if let Ok(mut running) = RUNNING.lock() {
        running.retain(|p| *p != pid);
    }
}

/// SIGTERM, a grace period, then SIGKILL; reaps the child.
fn stop(name: &str, child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if send_term(child.id()) {
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{name} ignored SIGTERM; killing it");
    }
    let _ = child.kill();
    let _ = child.wait();
}
