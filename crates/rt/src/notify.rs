//! The service manager's notification protocol (`sd_notify(3)`), for `Type=notify` units:
//! datagrams of newline-separated `KEY=VALUE` assignments (`READY=1`, `STATUS=…`,
//! `STOPPING=1`, `WATCHDOG=1`) sent to the Unix datagram socket named by `NOTIFY_SOCKET` (a
//! path, or `@name` for an abstract socket).
//!
//! Without `NOTIFY_SOCKET` every method is a no-op, so the programs call them unconditionally.
//! A send waits while the manager's queue is full (it holds only `net.unix.max_dgram_qlen`
//! datagrams, 10 by default, and `READY=1` must not be lost at a busy boot), but for at most
//! [`SEND_TIMEOUT`]; a datagram that still cannot go, or finds no manager, is dropped with one
//! warning (`STATUS` and `WATCHDOG` are sent again anyway). The manager tells the sender by
//! the kernel's credentials of the datagram, so units set `NotifyAccess=main`.
//!
//! [`Notifier::spawn_reporting`] runs what a program reports (its readiness and status lines,
//! a future of its own) and the watchdog keep-alive (`WATCHDOG=1` at half of `WATCHDOG_USEC`,
//! [`watchdog_interval`]) on the current runtime: the keep-alive is a task of that runtime,
//! so it stops when the runtime no longer runs tasks, which is what the watchdog is for.

use std::future::Future;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// The environment variable naming the manager's socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog timeout the manager set (`WatchdogSec=`), in microseconds.
pub const WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The process the watchdog timeout is for; absent means this one.
pub const WATCHDOG_PID: &str = "WATCHDOG_PID";
/// The longest a notification waits for room in the manager's queue.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Why `NOTIFY_SOCKET` cannot be used.
#[derive(Debug)]
pub enum NotifyError {
    /// Neither an absolute path nor `@name` (systemd's `vsock:` addresses are not supported).
    Address(String),
    /// The address is too long for a Unix socket, or a socket cannot be created.
    Socket {
        /// The value.
        socket: String,
        /// Why.
        source: io::Error,
    },
}

impl std::fmt::Display for NotifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyError::Address(socket) => write!(
                f,
                "NOTIFY_SOCKET={socket:?} is neither an absolute path nor an abstract socket \
                 (@name)"
            ),
            NotifyError::Socket { socket, source } => {
                write!(f, "NOTIFY_SOCKET={socket:?}: {source}")
            }
        }
    }
}

impl std::error::Error for NotifyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NotifyError::Address(_) => None,
            NotifyError::Socket { source, .. } => Some(source),
        }
    }
}

/// Sends notifications to the service manager; cheap to clone, a no-op when disabled.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    addr: SocketAddr,
    /// `NOTIFY_SOCKET` as given, for messages.
    name: String,
    /// Whether a failed send was already warned about.
    warned: AtomicBool,
}

impl Notifier {
    /// The notifier the environment describes: `NOTIFY_SOCKET`, and the watchdog interval
    /// ([`watchdog_interval`]). Disabled without `NOTIFY_SOCKET`; an unusable one is warned
    /// about (the program runs on without notifying).
    pub fn from_env() -> Notifier {
        let Some(socket) = std::env::var_os(NOTIFY_SOCKET) else {
            return Notifier::disabled();
        };
        let socket = socket.to_string_lossy();
        match Notifier::new(&socket) {
            Ok(notifier) => notifier.with_watchdog(watchdog_interval()),
            Err(error) => {
                warn!(%error, "cannot notify the service manager; running without it");
                Notifier::disabled()
            }
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// A notifier sending to `socket` (a `NOTIFY_SOCKET` value), without a watchdog.
    pub fn new(socket: &str) -> Result<Notifier, NotifyError> {
        let failed = |source| NotifyError::Socket {
            socket: socket.to_owned(),
            source,
        };
        let addr = if let Some(name) = socket.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).map_err(failed)?
        } else if socket.starts_with('/') {
            SocketAddr::from_pathname(socket).map_err(failed)?
        } else {
            return Err(NotifyError::Address(socket.to_owned()));
        };
        let datagram = UnixDatagram::unbound().map_err(failed)?;
        datagram
            .set_write_timeout(Some(SEND_TIMEOUT))
            .map_err(failed)?;
        Ok(Notifier {
            target: Some(Arc::new(Target {
                socket: datagram,
                addr,
                name: socket.to_owned(),
                warned: AtomicBool::new(false),
            })),
            watchdog: None,
        })
    }

    /// The same notifier, sending `WATCHDOG=1` every `interval` from
    /// [`Notifier::spawn_reporting`] (`None`: no keep-alive).
    pub fn with_watchdog(mut self, interval: Option<Duration>) -> Notifier {
        self.watchdog = interval;
        self
    }

    /// Whether notifications are sent at all.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The keep-alive interval [`Notifier::spawn_reporting`] uses, if any.
    pub fn keep_alive_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.is_enabled())
    }

    /// `READY=1`: start-up is finished.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STATUS=…`: a line for `systemctl status` (line breaks become spaces).
    pub fn status(&self, status: &str) {
        if self.is_enabled() {
            self.send(&format!("STATUS={}", status.replace(['\n', '\r'], " ")));
        }
    }

    /// `STOPPING=1`: shutting down (draining) has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// `WATCHDOG=1`: the keep-alive.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Send `state`, one or more `KEY=VALUE` lines, as one datagram.
    pub fn send(&self, state: &str) {
        let Some(target) = &self.target else {
            return;
        };
        match target.socket.send_to_addr(state.as_bytes(), &target.addr) {
            Ok(_) => debug!(state, "service manager notified"),
            Err(error) => {
                if !target.warned.swap(true, Ordering::Relaxed) {
                    warn!(
                        socket = %target.name,
                        %error,
                        state,
                        "cannot notify the service manager (warned once)"
                    );
                }
            }
        }
    }

    /// Run `reporting` (what the program tells the manager as its state changes) and, with a
    /// watchdog interval, the keep-alive, each as a task of the current runtime, until the
    /// returned guard is dropped. When disabled nothing is spawned and `reporting` is dropped
    /// unpolled, so a program without a manager pays nothing for its status lines.
    pub fn spawn_reporting<F>(&self, reporting: F) -> Reporting
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if !self.is_enabled() {
            return Reporting { tasks: Vec::new() };
        }
        let mut tasks = vec![tokio::spawn(reporting)];
        if let Some(interval) = self.keep_alive_interval() {
            let notifier = self.clone();
            tasks.push(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                // After a stall, one keep-alive, not a burst of them.
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    notifier.watchdog();
                }
            }));
        }
        Reporting { tasks }
    }
}

/// The tasks [`Notifier::spawn_reporting`] started; dropping it stops them.
#[derive(Debug)]
#[must_use = "dropping it stops the reporting at once"]
pub struct Reporting {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Reporting {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often to send `WATCHDOG=1`: half of `WATCHDOG_USEC` (systemd's advice), when it is set
/// for this process (`WATCHDOG_PID` absent or this process's id).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var(WATCHDOG_USEC).ok();
    let pid = std::env::var(WATCHDOG_PID).ok();
    watchdog_interval_of(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] from the variables' values and this process's id.
fn watchdog_interval_of(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok().filter(|usec| *usec > 0)?;
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(own_pid) {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::AtomicU32;

    use super::*;

    /// A socket name no other test (or test process) uses.
    fn unique(kind: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("underpass-notify-{kind}-{}-{n}", std::process::id())
    }

    /// The datagrams `socket` has queued, without waiting for more.
    fn received(socket: &UnixDatagram) -> Vec<String> {
        socket.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 4096];
        let mut all = Vec::new();
        while let Ok(n) = socket.recv(&mut buf) {
            all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        all
    }

    /// A socket file removed at the end of the test.
    struct PathSocket(PathBuf);

    impl Drop for PathSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn each_notification_is_one_datagram_on_a_path_socket() {
        let path = PathSocket(std::env::temp_dir().join(unique("path")));
        let manager = UnixDatagram::bind(&path.0).expect("bind the manager's socket");
        let notifier = Notifier::new(path.0.to_str().expect("a UTF-8 path")).expect("notifier");
        assert!(notifier.is_enabled());
        notifier.ready();
        notifier.status("2/4 connections registered,\n3 streams");
        notifier.stopping();
        notifier.watchdog();
        notifier.send("STATUS=draining\nSTOPPING=1");
        assert_eq!(
            received(&manager),
            [
                "READY=1",
                "STATUS=2/4 connections registered, 3 streams",
                "STOPPING=1",
                "WATCHDOG=1",
                "STATUS=draining\nSTOPPING=1",
            ]
        );
    }

    #[test]
    fn an_abstract_socket_is_named_with_an_at_sign() {
        let name = unique("abstract");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
        let notifier = Notifier::new(&format!("@{name}")).expect("notifier");
        notifier.ready();
        assert_eq!(received(&manager), ["READY=1"]);
    }

    #[test]
    fn disabled_or_unusable_notifiers_send_nothing_and_never_fail() {
        let disabled = Notifier::disabled().with_watchdog(Some(Duration::from_secs(1)));
        assert!(!disabled.is_enabled());
        assert_eq!(disabled.keep_alive_interval(), None);
        disabled.ready();
        disabled.status("anything");
        assert!(matches!(
            Notifier::new("relative/path"),
            Err(NotifyError::Address(_))
        ));
        assert!(matches!(
            Notifier::new("vsock:2:1234"),
            Err(NotifyError::Address(_))
        ));
        let too_long = format!("/{}", "x".repeat(200));
        assert!(matches!(
            Notifier::new(&too_long),
            Err(NotifyError::Socket { .. })
        ));
        // No one listens there: the send fails, is warned about once, and nothing else.
        let gone = Notifier::new(&format!("@{}", unique("gone"))).expect("notifier");
        gone.ready();
        gone.watchdog();
    }

    #[test]
    fn a_manager_that_reads_nothing_delays_a_send_but_never_blocks_it_for_good() {
        let name = unique("full");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
        let queue: usize = std::fs::read_to_string("/proc/sys/net/unix/max_dgram_qlen")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(10);
        let notifier = Notifier::new(&format!("@{name}")).expect("notifier");
        let sent = queue + 2;
        for n in 0..sent {
            notifier.status(&n.to_string());
        }
        // The queue took what it holds; the rest waited SEND_TIMEOUT each and was dropped.
        let got = received(&manager);
        assert!(
            !got.is_empty() && got.len() < sent,
            "{} of {sent}",
            got.len()
        );
        assert_eq!(got[0], "STATUS=0");
    }

    #[test]
    fn the_watchdog_interval_is_half_the_timeout_for_this_process_only() {
        let half = |usec, pid| watchdog_interval_of(usec, pid, 42);
        assert_eq!(half(Some("2000000"), None), Some(Duration::from_secs(1)));
        assert_eq!(
            half(Some("3000000"), Some("42")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(half(Some("2000000"), Some("41")), None);
        assert_eq!(half(Some("2000000"), Some("not a pid")), None);
        assert_eq!(half(Some("0"), None), None);
        assert_eq!(half(Some("soon"), None), None);
        assert_eq!(half(None, Some("42")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn reporting_runs_the_keep_alive_until_dropped() {
        let name = unique("watchdog");
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
        let manager = UnixDatagram::bind_addr(&addr).expect("bind the abstract socket");
        manager.set_nonblocking(true).expect("non-blocking");
        let manager = tokio::net::UnixDatagram::from_std(manager).expect("a tokio socket");
        let notifier = Notifier::new(&format!("@{name}"))
            .expect("notifier")
            .with_watchdog(Some(Duration::from_secs(5)));
        let reporter = notifier.clone();
        let reporting = notifier.spawn_reporting(async move { reporter.ready() });
        let mut buf = [0u8; 64];
        let mut seen = Vec::new();
        while seen.iter().filter(|s| *s == "WATCHDOG=1").count() < 3 {
            let n = manager.recv(&mut buf).await.expect("a datagram");
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(seen.contains(&"READY=1".to_owned()), "{seen:?}");
        drop(reporting);
        let manager = manager.into_std().expect("a std socket");
        // What was sent before the drop.
        let _ = received(&manager);
        // The keep-alive task is gone: the clock moves on a minute and nothing arrives.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(received(&manager), Vec::<String>::new());
    }

    #[test]
    fn without_a_manager_nothing_is_spawned() {
        // No runtime here: spawning would panic, so this shows that nothing is.
        let reporting = Notifier::disabled().spawn_reporting(async {});
        assert!(reporting.tasks.is_empty());
    }
}
